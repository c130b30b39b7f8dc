"""One run's leakage audit: canary exposure and extraction under the trained model, and
membership inference per client (members: the client's training examples; non-members:
its held-out examples)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedllm.data.build import FederatedData
from fedllm.data.canary import Canary, CanarySpec, fill
from fedllm.data.format import Example
from fedllm.model.state import set_trainable_state
from fedllm.privacy.audit.exposure import candidate_secrets, exposure_of, secret_space
from fedllm.privacy.audit.extract import extract
from fedllm.privacy.audit.metrics import LOW_FPR, attack
from fedllm.privacy.audit.score import Tick, encode_texts, example_losses, mean_losses
from fedllm.types import Params

_STAGE_CANDIDATES = 11
_STAGE_RECORDS = 12


class AuditError(ValueError):
    """A run that cannot be audited as asked."""


Progress = Callable[[str, int], AbstractContextManager[Tick]]
"""``progress(description, total)`` opens a bar and yields its advance (see :func:`no_progress`)."""


def no_progress(description: str, total: int) -> AbstractContextManager[Tick]:
    """A :data:`Progress` that shows nothing."""
    del description, total
    return nullcontext(lambda n: None)


@dataclass(frozen=True)
class AuditOptions:
    """How much the audit does.

    Attributes:
        max_records: most members and most non-members scored per client (a seeded
            subsample); None: all.
        batch_size: examples per forward pass.
        seed: the run seed (candidate draws and subsamples derive from it).
        fpr: the false-positive rate the attacks' TPR is read at.
    """

    max_records: int | None = 256
    batch_size: int = 16
    seed: int = 0
    fpr: float = LOW_FPR


@dataclass
class Models:
    """The one model in memory and the two states the audit swaps into it.

    Attributes:
        model: the model (base + method).
        tokenizer: its tokenizer.
        trained: the trained (global) state.
        base: the state before training: the reference model.
    """

    model: torch.nn.Module
    tokenizer: Any
    trained: Params
    base: Params

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def use(self, which: str) -> torch.nn.Module:
        """The model with the ``"trained"`` or ``"base"`` state in it."""
        set_trainable_state(self.model, self.trained if which == "trained" else self.base)
        return self.model


def audit_run(
    models: Models,
    data: FederatedData,
    canaries: Sequence[Canary],
    spec: CanarySpec | None,
    options: AuditOptions,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every measure, JSON-ready: ``canaries`` (exposure and extraction of each canary
    and control, each ranked without its siblings' secrets) and ``membership`` (per
    client and over all clients: the loss and the reference-calibrated attacks). The
    trained state is left in the model."""
    candidates = spec.candidates if spec is not None else 0
    template = spec.template if spec is not None else ""
    secrets = [c.secret for c in canaries]
    out: dict[str, Any] = {
        "canaries": [
            audit_canary(models, c, i, template, candidates, options, progress, secrets)
            for i, c in enumerate(canaries)
        ],
        "membership": membership(models, data, canaries, options, progress),
    }
    models.use("trained")
    return out


def audit_canary(
    models: Models,
    canary: Canary,
    index: int,
    template: str,
    candidates: int,
    options: AuditOptions,
    progress: Progress = no_progress,
    siblings: Sequence[str] = (),
) -> dict[str, Any]:
    """One canary's exposure among ``candidates`` secrets and its greedy extraction,
    under the trained model. ``siblings`` (the run's canaries' and controls' secrets)
    are neither candidates nor in its space: it could not have been one of them."""
    rng = np.random.default_rng([options.seed % 2**63, _STAGE_CANDIDATES, index])
    others, exact = candidate_secrets(canary.secret, candidates, rng, siblings)
    texts = [canary.text] + [fill(template, s) for s in others]
    examples = encode_texts(texts, canary.kind, models.tokenizer)
    model = models.use("trained")
    with progress(f"{canary.id}: ranking among {len(others)} secrets", len(examples)) as tick:
        sums, _ = example_losses(model, examples, options.batch_size, models.pad_id, tick)
    space = secret_space(canary.secret, siblings)
    found = exposure_of(float(sums[0]), sums[1:], space, exact)
    prefix = template.split("{secret}")[0]
    return {
        **canary.to_json(),
        **found.to_json(),
        "extraction": extract(
            model, models.tokenizer, prefix, canary.secret, canary.kind
        ).to_json(),
    }


def membership(
    models: Models,
    data: FederatedData,
    canaries: Sequence[Canary],
    options: AuditOptions,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Per client: the loss attack (score = -loss under the trained model) and the
    reference attack (score = -(loss trained - loss base)), members against held-out
    records; then both pooled over all clients. Inserted canaries are not members."""
    texts = [c.text for c in canaries]
    sets = {
        cid: (
            _sample(_without(client.train, texts, models.tokenizer), options, cid, 0),
            _sample(list(client.eval), options, cid, 1),
        )
        for cid, client in data.clients.items()
    }
    losses: dict[str, dict[str, np.ndarray]] = {cid: {} for cid in sets}
    total = sum(len(m) + len(n) for m, n in sets.values())
    for which in ("trained", "base"):
        model = models.use(which)
        with progress(f"membership: losses under the {which} model", total) as tick:
            for cid, (members, nonmembers) in sets.items():
                pair = members + nonmembers
                losses[cid][which] = mean_losses(
                    model, pair, options.batch_size, models.pad_id, tick
                )
    clients: dict[str, Any] = {}
    pooled: dict[str, list[np.ndarray]] = {"m_loss": [], "n_loss": [], "m_ref": [], "n_ref": []}
    for cid, (members, _) in sets.items():
        trained, base = losses[cid]["trained"], losses[cid]["base"]
        keep = np.isfinite(trained) & np.isfinite(base)
        is_member = np.arange(len(trained)) < len(members)
        loss_score, ref_score = -trained, -(trained - base)
        m, n = keep & is_member, keep & ~is_member
        clients[cid] = _attacks(loss_score[m], loss_score[n], ref_score[m], ref_score[n], options)
        clients[cid]["mean_loss_members"] = _mean(trained[m])
        clients[cid]["mean_loss_nonmembers"] = _mean(trained[n])
        pooled["m_loss"].append(loss_score[m])
        pooled["n_loss"].append(loss_score[n])
        pooled["m_ref"].append(ref_score[m])
        pooled["n_ref"].append(ref_score[n])
    joined = {k: np.concatenate(v) if v else np.zeros(0) for k, v in pooled.items()}
    everyone = _attacks(
        joined["m_loss"], joined["n_loss"], joined["m_ref"], joined["n_ref"], options
    )
    return {"clients": clients, "all": everyone}


def _attacks(
    m_loss: np.ndarray,
    n_loss: np.ndarray,
    m_ref: np.ndarray,
    n_ref: np.ndarray,
    options: AuditOptions,
) -> dict[str, Any]:
    if len(m_loss) == 0 or len(n_loss) == 0:
        return {"loss": None, "reference": None, "members": len(m_loss), "nonmembers": len(n_loss)}
    return {
        "loss": attack(m_loss, n_loss, options.fpr).to_json(),
        "reference": attack(m_ref, n_ref, options.fpr).to_json(),
        "members": len(m_loss),
        "nonmembers": len(n_loss),
    }


def _without(examples: Sequence[Example], texts: Sequence[str], tokenizer: Any) -> list[Example]:
    """``examples`` except those whose decoded text holds one of ``texts`` (canaries)."""
    if not texts:
        return list(examples)
    return [e for e in examples if not any(t in tokenizer.decode(e.input_ids) for t in texts)]


def _sample(examples: list[Example], options: AuditOptions, cid: str, side: int) -> list[Example]:
    """At most ``options.max_records`` of ``examples``, a seeded subsample in their order."""
    cap = options.max_records
    if cap is None or len(examples) <= cap:
        return examples
    key = zlib.crc32(cid.encode("utf-8"))
    rng = np.random.default_rng([options.seed % 2**63, _STAGE_RECORDS, key, side])
    chosen = np.sort(rng.choice(len(examples), size=cap, replace=False))
    return [examples[int(i)] for i in chosen]


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def recorded_canaries(summary: dict[str, Any] | None, built: Sequence[Canary]) -> list[Canary]:
    """The canaries a run recorded (``summary.json``'s ``data.canaries``), checked against
    those its data build gives now; the built ones when the run has no summary yet.

    Raises:
        AuditError: the recorded and rebuilt canaries differ (the code or the corpus
            changed since the run: the audit would test secrets it never trained on).
    """
    raw = (summary or {}).get("data", {}).get("canaries")
    if raw is None:
        return list(built)
    recorded = [Canary.from_json(item) for item in raw]
    if recorded != list(built):
        raise AuditError(
            "the canaries in summary.json differ from those the run's config builds now "
            "(fedllm or the corpus changed since the run); re-run it to audit it"
        )
    return recorded
