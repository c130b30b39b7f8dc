"""The local learning-rate schedule spanning the whole run (``client.lr_schedule_span``).

With ``client.lr_schedule_span = "run"`` each client's warm-up and decay
(``client.warmup_steps``, ``client.lr_schedule``) run once over all of its local
steps in the run, ``H x server.rounds`` steps for a client taking ``H`` steps a
round, instead of restarting every round: DiLoCo's inner schedule (Douillard et
al. 2023). Each round continues at the step its previous one stopped at; the
count is kept per client (checkpointed, so a resumed run continues it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("run_schedule")
class RunSchedule:
    """DiLoCo's inner schedule; every mode (the pooled client of a centralized run spans
    its own steps over the rounds the same way)."""

    order = 75

    def setting(self, config: Config) -> str | None:
        return (
            "client.lr_schedule_span = 'run'" if config.client.lr_schedule_span == "run" else None
        )

    def problem(self, config: Config) -> str | None:
        client = config.client
        if client.lr_schedule == "constant" and client.warmup_steps == 0:
            return (
                "client.lr_schedule_span = 'run' has nothing to span: client.lr_schedule = "
                "'constant' with client.warmup_steps = 0 keeps one learning rate; set "
                "client.warmup_steps > 0 or client.lr_schedule = 'cosine' (or 'linear'), or "
                "leave client.lr_schedule_span = 'round'"
            )
        return None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.run_schedule.client import RunSchedulePlugin

        config = setup.ws.config
        if config.client.lr_schedule_span != "run":
            return None
        return Algorithm("run_schedule", client=RunSchedulePlugin(config.server.rounds))
