"""The server half of a data attack: measures its success on the global model.

At round 0 (the model before training), at each evaluation round (``eval.every``) and
after the last round, or only after the last round (``measure_every_eval = false``),
the global model (the server's state over the initial one: personal parts, if any, at
their initial values) replies greedily to the attack's prompts; each measured round's
record gets ``data_attack`` (the rates, and the round), ``summary.json`` the first and
the last measurement, the malicious clients and the poisoned record counts. A run
stopped early (a spent privacy budget) keeps its last measured round.

Generation leaves the global torch generator as it was (greedy, under a forked RNG),
so an attacked run trains exactly as it would without the measurements.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fedllm.security.attacks.data_attack import NAME
from fedllm.server.plugin import RoundContext, ServerPlugin

if TYPE_CHECKING:
    from fedllm.composition import AlgorithmSetup
    from fedllm.data.sources import Record
    from fedllm.security.attacks.poison import DataAttack
    from fedllm.types import ClientId, Params, RoundRecord

EXTRA_TOKENS = 4
"""Tokens generated beyond the matched words' own, by default."""


class SuccessRecorder(ServerPlugin):
    """Measures the data attack's success on the global model and records it.

    Args:
        attack: the configured data attack.
        setup: the run being built (its workspace: model, tokenizer, config, data).
    """

    name = NAME

    def __init__(self, attack: DataAttack, setup: AlgorithmSetup) -> None:
        from fedllm.security.attacks.targets import malicious_clients

        self.attack = attack
        self.ws = setup.ws
        self.start = setup.shared
        config = setup.ws.config
        data = setup.ws.data
        clients = list(data.clients) if data is not None and data.clients else list(setup.clients)
        self.malicious: list[ClientId] = malicious_clients(config.attack, clients, config.seed)
        self.poisoned = dict(data.poisoned) if data is not None else {}
        self.every = attack.success is not None and attack.success.measure_every_eval
        self.test: list[Record] | None = None
        self.first: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def baseline(self, record: RoundRecord) -> None:
        if self.every:
            self._measure(record, self.start)

    def end_round(self, ctx: RoundContext) -> None:
        config = self.ws.config
        last = ctx.round == config.server.rounds
        if last or (self.every and ctx.round % config.eval.every == 0):
            self._measure(ctx.record, ctx.params)

    def _measure(self, record: RoundRecord, params: Params) -> None:
        if self.attack.success is None:  # no success rate to measure (flipping)
            return
        rates = {"round": record.round, **self.success_rates(params)}
        record.extra[NAME] = rates
        self.first = self.first or rates
        self.last = rates

    def success_rates(self, params: Params) -> dict[str, float]:
        """The attack's rates with the global model set to ``params`` (non-finite rates,
        of no prompt, left out)."""
        from fedllm.data.build import load_test_records
        from fedllm.eval.generate import generate_reply
        from fedllm.model.state import set_trainable_state

        ws, config = self.ws, self.ws.config
        if self.test is None:
            self.test = load_test_records(config.data, config.seed)
        set_trainable_state(ws.model, {**ws.initial, **params})
        budget = self.generated_tokens()

        def generate(prompt: str) -> str:
            return generate_reply(ws.model, ws.tokenizer, prompt, budget)

        rates = self.attack.measure(self.test, generate, config.seed)
        return {k: v for k, v in rates.items() if math.isfinite(v)}

    def generated_tokens(self) -> int:
        """``max_new_tokens``, else the tokens of the matched words plus
        :data:`EXTRA_TOKENS`."""
        from fedllm.security.attacks.success import matched_prefix

        settings = self.attack.success
        assert settings is not None, "an attack without a success rate generates nothing"
        if settings.max_new_tokens is not None:
            return settings.max_new_tokens
        text = matched_prefix(self.attack.matched, settings.match_words)
        ids = self.ws.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) + EXTRA_TOKENS

    def state(self) -> tuple[Params, dict[str, Any]]:
        return {}, {"first": self.first, "last": self.last}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        self.first = dict(meta.get("first", {}))
        self.last = dict(meta.get("last", {}))

    def summary(self) -> dict[str, Any]:
        config = self.ws.config.attack
        placed = {"malicious": self.malicious} if config.placement == "malicious" else {}
        measured = {"initial": self.first, "final": self.last} if self.last else {}
        return {
            "data": self.attack.name,
            "placement": config.placement,
            "share": config.share,
            **placed,
            "poisoned": self.poisoned,
            "poisoned_records": sum(self.poisoned.values()),
            **measured,
        }
