"""The server's own training on the public corpus (``public.warmup_steps``,
``public.server_steps``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("public_server")
class PublicServerTraining:
    """A warm-up before round 1 and a weighted participant each round (federated and
    centralized; clients training alone have no global model for it)."""

    order = 80
    modes = ("federated", "centralized")
    modes_why = "clients training alone have no global model for the server to train"

    def setting(self, config: Config) -> str | None:
        public = config.public
        trained = [
            f"public.{key} = {getattr(public, key)}"
            for key in ("warmup_steps", "server_steps")
            if getattr(public, key) > 0
        ]
        return ", ".join(trained) or None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        refused = [("personal", "the server holds no personal parameters to train the model with")]
        if config.public.server_steps > 0:
            refused.append(
                ("fednova", "the server's update is not step-normalised like the clients'")
            )
        return refused

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.public_server.server import PublicServer, PublicServerPlugin

        ws = setup.ws
        cfg = ws.config.public
        if ws.public is None or (cfg.warmup_steps == 0 and cfg.server_steps == 0):
            return None
        if setup.mode == "local":
            return None
        server = PublicServer(ws.model, ws.public, ws.config, ws.pad_id)
        plugin = PublicServerPlugin(server, cfg.warmup_steps, cfg.server_steps, cfg.server_weight)
        return Algorithm("public_server", server=plugin)
