"""Data attacks in a run (``attack.data = "<name>"``): the registered algorithm that
poisons the clients' training records and measures the attack's success.

- **Poisoning** happens once, when the data is built, before anything is tokenized: the
  run's data build asks every active algorithm for a ``train_records(config)`` transform
  (:func:`fedllm.federation.early.train_transform`), and this one gives
  :func:`~fedllm.security.attacks.poison.poison_transform`. Held-out and test records
  are never poisoned, so every loss a run reports is on clean data.
- **Success** is measured on the global model, with greedy replies to the held-out test
  split's prompts (:mod:`.recorder`): at round 0 (the model before training) and at
  each evaluation round (``eval.every`` and the last round), or only after the last
  round (``measure_every_eval = false``). Each measured round's record gets
  ``data_attack`` (the rates), and ``summary.json`` the first and the last, with the
  poisoned record counts per client.

Federated and centralized modes (both have a global model), on the simulator only (a
Flower node cannot tell whether it is one of the malicious clients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedllm.components import ALGORITHMS, ATTACKS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.security.attacks.settings import NO_ATTACK

if TYPE_CHECKING:
    from fedllm.config import Config
    from fedllm.data.build import TrainTransform
    from fedllm.security.attacks.poison import DataAttack

NAME = "data_attack"
"""The algorithm's name: its round records' key and its part of ``summary.json``."""


def build_data_attack(config: Config) -> DataAttack:
    """The configured data attack, built from its ``[attack.<name>]`` settings."""
    name = config.attack.data
    factory: Any = ATTACKS.get(name)
    attack: DataAttack = factory(config.attack_settings_of(name))
    return attack


@ALGORITHMS.register(NAME)
class DataAttacking:
    """The data attack ``attack.data`` names: poisoned training records, success rates."""

    order = 90  # its server half measures the model the others have stepped
    modes = ("federated", "centralized")
    modes_why = "its success rates are measured on a global model, which clients alone lack"

    def setting(self, config: Config) -> str | None:
        name = config.attack.data
        return f"attack.data = {name!r}" if name != NO_ATTACK else None

    def problem(self, config: Config) -> str | None:
        from pydantic import ValidationError

        name = config.attack.data
        try:
            config.attack_settings_of(name)
        except ValidationError as err:
            details = "; ".join(
                f"attack.{name}.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                if e["loc"]
                else f"[attack.{name}]: {e['msg']}"
                for e in err.errors()
            )
            return f"attack.data = {name!r} cannot use its settings: {details}"
        if config.runtime.engine != "simulation":
            return (
                f"attack.data = {name!r} is simulated: it needs runtime.engine = "
                "'simulation' (a Flower node cannot tell whether it is a malicious client)"
            )
        attack = config.attack
        if attack.placement == "malicious" and not attack.clients and attack.fraction == 0:
            return (
                f"attack.data = {name!r} poisons the malicious clients' data, but there are "
                "none: set attack.fraction (> 0) or attack.clients, or "
                "attack.placement = 'everywhere'"
            )
        return None

    def train_records(self, config: Config) -> TrainTransform:
        """The data build's transform: the poisoning."""
        from fedllm.security.attacks.poison import poison_transform

        return poison_transform(build_data_attack(config), config.attack, config.seed)

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        config = setup.ws.config
        if config.attack.data == NO_ATTACK or setup.partial:
            return None
        from fedllm.security.attacks.recorder import SuccessRecorder

        return Algorithm(NAME, server=SuccessRecorder(build_data_attack(config), setup))
