"""Pre-training efficiency of a run: tokens, communication per token and MFU.

Each trained round's record holds ``tokens`` (input tokens the cohort processed,
padding excluded: the sum of the clients' ``tokens`` metrics, rejected updates
included), ``label_tokens`` (the tokens the loss scored; in pre-training about the
same, in instruction tuning only the replies) and each per second of the round's
training time, ``time_s.train`` (``tokens_per_s`` is the throughput),
written by :class:`fedllm.protocol.tally.Tally`; :meth:`Efficiency.annotate`
adds ``bytes_per_token`` (bytes up plus down over tokens) and ``mfu``, the
model FLOPs utilisation (PaLM, Chowdhery et al. 2022)::

    mfu = flops_per_token x tokens_per_s / peak FLOP/s

with :func:`fedllm.model.flops.flops_per_token` (``6N + 12LHQT`` for full
training, ``4N + 12LHQT`` when the base is frozen) at ``data.seq_len``, and
the peak from ``run.peak_tflops`` or the table of known CUDA GPUs
(:func:`fedllm.model.device.peak_flops`). Without a known peak (the CPU) there
is no ``mfu``. The training seconds include the clients' data collation and
the server's streaming of updates into the aggregate, so MFU is a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedllm.federation.setup import Workspace
from fedllm.model.device import model_devices, peak_flops
from fedllm.model.flops import flops_per_token
from fedllm.protocol.tally import COUNTED
from fedllm.types import RoundRecord


@dataclass(frozen=True)
class Efficiency:
    """What turns a round's tokens and seconds into efficiency metrics.

    Attributes:
        flops_per_token: training FLOPs per token of the model; None when the
            model is not Llama-shaped (no MFU then).
        peak_flops: peak FLOP/s of the training device(s); None when unknown.
    """

    flops_per_token: int | None
    peak_flops: float | None

    @classmethod
    def of(cls, ws: Workspace) -> Efficiency:
        """The model's FLOPs per token and its devices' peak, from the workspace."""
        config = ws.config
        model_config: Any = getattr(ws.model, "config", None)  # a peft model forwards it
        frozen = config.method.kind != "full"
        flops: int | None
        try:
            flops = flops_per_token(model_config, config.data.seq_len, frozen_base=frozen)
        except ValueError:  # not a Llama-shaped model
            flops = None
        return cls(flops, peak_flops(model_devices(ws.model), config.run.peak_tflops))

    def mfu(self, tokens_per_s: float | None) -> float | None:
        """Model FLOPs utilisation (0 to 1) at ``tokens_per_s``; None if anything is unknown."""
        if self.flops_per_token is None or self.peak_flops is None or tokens_per_s is None:
            return None
        return self.flops_per_token * tokens_per_s / self.peak_flops

    def annotate(self, record: RoundRecord) -> None:
        """Add ``bytes_per_token`` and ``mfu`` to a trained round's record (when defined)."""
        tokens = record.extra.get("tokens", 0)
        if tokens > 0:
            record.extra["bytes_per_token"] = (record.bytes_up + record.bytes_down) / tokens
        mfu = self.mfu(record.extra.get("tokens_per_s"))
        if mfu is not None:
            record.extra["mfu"] = mfu

    def summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Whole-run totals: tokens and label tokens (each also per second over all
        training time), bytes per token and MFU."""
        trained = [r for r in records if r["round"] > 0]
        sent = sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in trained)
        train_s = sum(r.get("time_s", {}).get("train", 0.0) for r in trained)
        out: dict[str, Any] = {"train_flops_per_token": self.flops_per_token}
        for key in COUNTED:  # as each round's record counts them
            out[key] = sum(r.get(key, 0) for r in trained)
            if out[key] > 0 and train_s > 0:
                out[f"{key}_per_s"] = out[key] / train_s
        tokens = out["tokens"]
        if tokens > 0:
            out["bytes_per_token"] = sent / tokens
        if tokens > 0 and train_s > 0:
            mfu = self.mfu(out["tokens_per_s"])
            if mfu is not None:
                out["mfu"] = mfu
        return out
