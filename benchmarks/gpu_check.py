"""Check the CUDA paths on a GPU machine and write what was seen as JSON.

Each check runs one federated round (or a short run) of the tiny preset on
``--device`` and compares it with the plain fp32 round on the same device:

* ``fp32``: a round on the device; its update against the same round on the CPU.
* ``bf16``: ``client.bf16`` autocast follows the fp32 trajectory, fp32 master weights.
* ``fp16``: ``client.fp16`` autocast with the GradScaler follows it too.
* ``gradient_checkpointing``: the same update as without.
* ``device_map``: ``model.device_map = "auto"`` (accelerate) places every layer on
  a GPU and trains the same update.
* ``offload``: ``client.offload = "optimizer"`` trains the same update with the
  AdamW state in CPU memory; peak GPU memory with and without, on llama-20m.
* ``run``: a 2-round run records tokens/s and MFU (the GPU's peak is in the
  table), evaluates, exports a final model that transformers loads on the GPU,
  and generates from it.

With ``--device cpu`` (no GPU) the CUDA-only options must be refused with a
DeviceError naming them; those checks pass when they are. Writes
benchmarks/results/gpu_check.json (or ``--out``); exits 1 if a check failed.

Usage: python -m benchmarks.gpu_check [--device cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine
from fedllm.config import Config, ConfigError, load_config
from fedllm.eval.generate import generate_reply
from fedllm.federation.modes import build_mode
from fedllm.federation.runner import run
from fedllm.federation.setup import prepare
from fedllm.model.device import device_peak_tflops, model_devices
from fedllm.types import Params

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
BASE = ("method.kind='full'", "client.local_steps=4", "client.lr=1e-3")
Result = dict[str, Any]


def config(device: str, *overrides: str) -> Config:
    return load_config(TINY, [f'run.device="{device}"', *BASE, *overrides])


def one_round(cfg: Config, tmp: Path) -> tuple[Params, dict[str, Any], list[str]]:
    """The global state after round 1, the round's record and the model's devices."""
    ws = prepare(cfg)
    mode = build_mode(ws, tmp)
    record = mode.play_round(1, None)
    state = dict(mode.final_states())[""]
    return state, record.to_json(), [str(d) for d in model_devices(ws.model)]


def drift(state: Params, reference: Params, start: Params) -> dict[str, float]:
    """How far ``state`` is from ``reference``, relative to how far training moved."""
    moved = sum(float((reference[n] - start[n]).float().norm()) for n in reference)
    gap = sum(float((state[n] - reference[n]).float().norm()) for n in reference)
    return {"moved": moved, "gap": gap, "relative_gap": gap / moved if moved else float("inf")}


class Checker:
    """Runs the checks on one device against a fp32 reference round there."""

    def __init__(self, device: str, tmp: Path) -> None:
        self.device = device
        self.tmp = tmp
        self.start = prepare(config(device), with_data=False).initial
        self.reference, _, _ = one_round(config(device), tmp / "reference")
        self.gpu = device != "cpu"

    def round_against_reference(self, name: str, *overrides: str, tol: float) -> Result:
        state, record, devices = one_round(config(self.device, *overrides), self.tmp / name)
        measured = drift(state, self.reference, self.start)
        dtypes = sorted({str(t.dtype) for t in state.values()})
        ok = measured["relative_gap"] < tol and record["train_loss"] is not None
        return {"ok": ok, "tolerance": tol, "devices": devices, "dtypes": dtypes, **measured}

    def refused(self, *overrides: str) -> Result:
        """On the CPU: the option must be refused, naming itself."""
        try:
            prepare(config(self.device, *overrides), with_data=False)
        except ConfigError as err:  # DeviceError is a ConfigError
            named = overrides[0].split("=")[0] in str(err)
            return {"ok": named, "refused": str(err)}
        return {"ok": False, "refused": None}

    def fp32(self) -> Result:
        if not self.gpu:
            return {"ok": True, "note": "the reference itself"}
        cpu_state, _, _ = one_round(config("cpu"), self.tmp / "cpu")
        measured = drift(self.reference, cpu_state, self.start)
        return {"ok": measured["relative_gap"] < 0.05, "against": "cpu", **measured}

    def bf16(self) -> Result:
        result = self.round_against_reference("bf16", "client.bf16=true", tol=0.5)
        result["ok"] = result["ok"] and result["dtypes"] == ["torch.float32"]
        return result

    def fp16(self) -> Result:
        if not self.gpu:
            return self.refused("client.fp16=true")
        result = self.round_against_reference("fp16", "client.fp16=true", tol=0.5)
        result["ok"] = result["ok"] and result["dtypes"] == ["torch.float32"]
        return result

    def gradient_checkpointing(self) -> Result:
        return self.round_against_reference(
            "checkpointing", "client.gradient_checkpointing=true", tol=1e-3
        )

    def device_map(self) -> Result:
        if not self.gpu:
            return self.refused("model.device_map='auto'")
        result = self.round_against_reference("device_map", "model.device_map='auto'", tol=1e-3)
        result["ok"] = result["ok"] and all(d.startswith("cuda") for d in result["devices"])
        return result

    def offload(self) -> Result:
        if not self.gpu:
            return self.refused("client.offload='optimizer'")
        result = self.round_against_reference("offload", "client.offload='optimizer'", tol=1e-3)
        memory = {}
        for setting in ("none", "optimizer"):
            gc.collect()  # earlier checks' models off the GPU before measuring
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            one_round(
                config(
                    self.device,
                    "model.name='llama-20m'",
                    f"client.offload='{setting}'",
                    "client.local_steps=2",
                ),
                self.tmp / f"memory-{setting}",
            )
            memory[setting] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_gpu_mb"] = memory
        result["ok"] = result["ok"] and memory["optimizer"] < memory["none"]
        return result

    def run(self) -> Result:
        out = self.tmp / "run"
        result = run(config(self.device, "server.rounds=2"), out)
        trained = result.records[1:]
        speeds = [r.get("tokens_per_s") for r in trained]
        mfus = [r.get("mfu") for r in trained]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(out / "final").to(self.device)
        tokenizer = AutoTokenizer.from_pretrained(out / "final")
        reply = generate_reply(model, tokenizer, "Hello", max_new_tokens=8)
        ok = all(s is not None and s > 0 for s in speeds) and "test_ppl" in trained[-1]["eval"]
        if self.gpu:
            ok = ok and all(m is not None and 0 < m < 1 for m in mfus)
        return {
            "ok": ok,
            "tokens_per_s": speeds,
            "mfu": mfus,
            "summary_mfu": result.summary.get("mfu"),
            "final_test_ppl": trained[-1]["eval"].get("test_ppl"),
            "generated": reply,
        }


def gpu_facts() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"cuda": False, "torch_cuda": torch.version.cuda}
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cuda": True,
        "torch_cuda": torch.version.cuda,
        "devices": names,
        "peak_bf16_tflops": [device_peak_tflops(n) for n in names],
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = parser.parse_args()
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checker = Checker(args.device, Path(tmp))
        checks: dict[str, Callable[[], Result]] = {
            "fp32": checker.fp32,
            "bf16": checker.bf16,
            "fp16": checker.fp16,
            "gradient_checkpointing": checker.gradient_checkpointing,
            "device_map": checker.device_map,
            "offload": checker.offload,
            "run": checker.run,
        }
        for name, check in checks.items():
            began = time.perf_counter()
            try:
                results[name] = check()
            except Exception as err:  # a failed check is a result, not the end
                results[name] = {"ok": False, "error": repr(err), "trace": traceback.format_exc()}
            results[name]["seconds"] = round(time.perf_counter() - began, 2)
            print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'}", flush=True)
    payload = {
        "benchmark": "gpu_check",
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "machine": machine(),
        "gpu": gpu_facts(),
        "checks": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: v["ok"] for k, v in results.items()}, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
