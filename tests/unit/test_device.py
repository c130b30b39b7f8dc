"""Device options: refusals without a GPU, autocast, fp16 loss scaling, optimizer offload.

The CUDA paths themselves are exercised by benchmarks/gpu_check.py on a GPU
machine; here the device-independent parts run on the CPU, where the same
code takes the same steps (autocast dtypes, the GradScaler, the offload hooks).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fedllm.algorithms.fedprox.client import ProximalTerm
from fedllm.algorithms.scaffold.client import Correction
from fedllm.client.hooks import TrainHook
from fedllm.client.offload import offloaded_optimizer
from fedllm.client.train import build_optimizer, train_locally
from fedllm.config import ClientConfig, ConfigError, ModelConfig, parse_config
from fedllm.data import Example
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.device import (
    DeviceError,
    autocast,
    check_device_map,
    device_peak_tflops,
    native_bf16,
    peak_flops,
    precision_label,
    resolve_device,
    resolved_dtype,
    use_bf16,
)
from fedllm.model.load import load_base_model
from fedllm.model.state import get_trainable_state, set_trainable_state
from tests.support.runs import tiny_config

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")


# ---------------------------------------------------------------- config and device choice


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"client": {"fp16": True}}, "client.fp16 = true"),
        ({"client": {"offload": "optimizer"}}, "client.offload = 'optimizer'"),
        ({"model": {"device_map": "auto"}}, "model.device_map = 'auto'"),
    ],
)
def test_cuda_only_options_are_refused_on_the_cpu_at_load(
    setting: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(setting)  # run.device defaults to "cpu"
    message = str(err.value)
    assert named in message and "run.device = 'cpu'" in message
    assert "run.device = 'cuda'" in message  # the fix
    on_gpu = {**setting, "run": {"device": "cuda"}}
    assert parse_config(on_gpu).run.device == "cuda"  # a GPU is only looked for at run start


def test_precision_combinations_are_refused() -> None:
    with pytest.raises(ConfigError, match="client.bf16 = True with client.fp16 = true"):
        parse_config({"run": {"device": "cuda"}, "client": {"bf16": True, "fp16": True}})
    with pytest.raises(ConfigError, match="client.bf16 = 'auto' with client.fp16 = true"):
        parse_config({"run": {"device": "cuda"}, "client": {"bf16": "auto", "fp16": True}})
    with pytest.raises(ConfigError, match=r"client\.bf16"):
        parse_config({"client": {"bf16": "sometimes"}})
    assert parse_config({"client": {"bf16": "auto"}}).client.bf16 == "auto"
    with pytest.raises(ConfigError, match="client.fp16 = true with client.offload = 'optimizer'"):
        parse_config({"run": {"device": "cuda"}, "client": {"fp16": True, "offload": "optimizer"}})
    with pytest.raises(ConfigError, match=r"run\.device = 'gpu'"):
        parse_config({"run": {"device": "gpu"}})
    with pytest.raises(ConfigError, match=r"model\.device_map = 'everywhere'"):
        parse_config({"model": {"device_map": "everywhere"}})


def test_resolve_device_follows_run_device_and_what_is_there() -> None:
    def config(device: str, **client: Any) -> Any:
        return parse_config({"run": {"device": device}, "client": client})

    assert resolve_device(config("cpu"), cuda_available=True) == torch.device("cpu")
    assert resolve_device(config("auto"), cuda_available=True) == torch.device("cuda")
    assert resolve_device(config("auto"), cuda_available=False) == torch.device("cpu")
    assert resolve_device(config("cuda"), cuda_available=True) == torch.device("cuda")
    with pytest.raises(DeviceError, match=r"run\.device = 'cuda' but torch\.cuda\.is_available"):
        resolve_device(config("cuda"), cuda_available=False)
    with pytest.raises(DeviceError, match=r"client\.fp16 = true needs a CUDA GPU.*'auto'"):
        resolve_device(config("auto", fp16=True), cuda_available=False)
    with pytest.raises(DeviceError, match=r"client\.offload = 'optimizer' needs a CUDA GPU"):
        resolve_device(config("auto", offload="optimizer"), cuda_available=False)


@NO_GPU
def test_prepare_refuses_a_missing_gpu_before_loading_anything() -> None:
    with pytest.raises(DeviceError, match=r"run\.device = 'cuda'.*set run\.device = 'cpu'"):
        prepare(tiny_config('run.device="cuda"', 'data.source="no-such-file.jsonl"'))
    with pytest.raises(DeviceError, match=r"model\.device_map = 'auto' needs a CUDA GPU"):
        prepare(tiny_config('run.device="auto"', 'model.device_map="auto"'))


@NO_GPU
def test_device_map_without_gpus_names_the_option() -> None:
    with pytest.raises(DeviceError, match=r"model\.device_map placed <whole model> on the CPU"):
        load_base_model(ModelConfig(name="tiny", device_map="balanced"), seed=0)


def test_device_map_check_accepts_gpus_only() -> None:
    check_device_map({"model.embed_tokens": 0, "model.layers.0": 1, "lm_head": "cuda:1"})
    with pytest.raises(DeviceError, match=r"model\.layers\.1, lm_head on the CPU or disk"):
        check_device_map({"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"})


def test_peak_table_and_override() -> None:
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("NVIDIA H200") == 989.0
    assert device_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert device_peak_tflops("NVIDIA L4") == 121.0
    assert device_peak_tflops("NVIDIA L40S") == 362.0
    assert device_peak_tflops("NVIDIA GeForce GTX 1080") is None
    assert peak_flops([torch.device("cpu")], None) is None
    assert peak_flops([torch.device("cpu")], 2.5) == 2.5e12


@pytest.mark.parametrize(
    ("bf16", "fp16", "dtype"),
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.float16)],
)
def test_autocast_dtype_follows_the_options(bf16: bool, fp16: bool, dtype: torch.dtype) -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), bf16, fp16):
        assert (a @ b).dtype == dtype


@pytest.mark.parametrize("avx512_bf16, amx", [(False, False), (True, False), (False, True)])
def test_auto_bf16_follows_the_cpus_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    native = avx512_bf16 or amx
    assert native_bf16(cpu) is native and use_bf16("auto", cpu) is native
    assert use_bf16(True, cpu) is True and use_bf16(False, cpu) is False
    assert precision_label("auto", cpu) == ("bf16 autocast (auto)" if native else "fp32 (auto)")
    assert precision_label(True, cpu) == "bf16 autocast" and precision_label(False, cpu) == "fp32"


@pytest.mark.parametrize("native", [False, True])
def test_auto_dtype_holds_a_frozen_base_in_bf16_only_where_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    lora = tiny_config('model.dtype="auto"')
    full = tiny_config('model.dtype="auto"', 'method.kind="full"')
    assert resolved_dtype(lora, cpu).model.dtype == ("bfloat16" if native else "float32")
    assert resolved_dtype(full, cpu).model.dtype == "float32"  # master weights stay fp32
    fixed = tiny_config('model.dtype="float32"')
    assert resolved_dtype(fixed, cpu) is fixed
    ws = prepare(lora, with_data=False)
    frozen = {p.dtype for p in ws.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16 if native else torch.float32}
    assert {t.dtype for t in ws.initial.values()} == {torch.float32}  # exchanged: fp32
    assert ws.config.model.dtype == resolved_dtype(lora, cpu).model.dtype


# ---------------------------------------------------------------- local training paths


@pytest.fixture(scope="module")
def ws() -> Workspace:
    return prepare(tiny_config("method.kind='full'"))


def examples_of(ws: Workspace) -> list[Example]:
    assert ws.data is not None
    return next(iter(ws.data.clients.values())).train


def train_from_start(
    ws: Workspace, model: torch.nn.Module | None = None, steps: int = 3, **client: Any
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Local training from the initial state; the trained state and the metrics."""
    set_trainable_state(ws.model, ws.initial)
    cfg = ws.config.client.model_copy(update=client)
    names = [n for n, p in ws.model.named_parameters() if p.requires_grad]
    correction = {n: torch.full_like(ws.initial[n], 1e-3) for n in names}
    hooks: list[TrainHook] = []
    if cfg.prox_mu > 0:  # FedProx anchored at the start, and a SCAFFOLD correction
        hooks = [ProximalTerm(cfg.prox_mu), Correction(correction)]
    metrics = train_locally(
        model or ws.model, examples_of(ws), cfg, steps, 7, ws.pad_id, hooks, ws.initial
    )
    return get_trainable_state(ws.model), metrics


def test_offloaded_adamw_takes_exactly_the_plain_steps(ws: Workspace) -> None:
    """Warm-up, cosine schedule, FedProx and a SCAFFOLD correction between steps."""
    common: dict[str, Any] = {
        "optimizer": "adamw",
        "lr": 1e-2,
        "weight_decay": 0.1,
        "warmup_steps": 1,
        "lr_schedule": "cosine",
        "prox_mu": 0.5,
    }
    plain, plain_metrics = train_from_start(ws, steps=4, **common)
    offloaded, metrics = train_from_start(ws, steps=4, offload="optimizer", **common)
    assert any(not torch.equal(plain[n], ws.initial[n]) for n in plain)
    for name in plain:
        assert torch.equal(offloaded[name], plain[name]), name
    assert metrics["lr_sum"] == plain_metrics["lr_sum"]
    assert metrics["train_loss"] == plain_metrics["train_loss"]


def test_offloaded_optimizer_keeps_its_state_on_master_copies() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.bfloat16))
    optimizer = offloaded_optimizer([weight], lambda ps: torch.optim.AdamW(ps, lr=0.1))
    master = optimizer.param_groups[0]["params"][0]
    assert master is not weight and master.dtype == torch.float32 and master.device.type == "cpu"
    weight.grad = torch.tensor([1.0, -1.0], dtype=torch.bfloat16)
    optimizer.step()
    state = optimizer.state[master]
    assert state["exp_avg"].dtype == torch.float32 and weight not in optimizer.state
    assert weight.grad is None, "device gradients are dropped after the step"
    # AdamW's first step moves each weight by lr * sign(grad) after decay lr * wd * w
    expected = torch.tensor([1.0 * (1 - 0.1 * 0.01) - 0.1, -2.0 * (1 - 0.1 * 0.01) + 0.1])
    torch.testing.assert_close(master.detach(), expected)
    assert torch.equal(weight.detach(), expected.to(torch.bfloat16))


def test_offload_keeps_fp32_master_precision_for_bf16_weights() -> None:
    """Steps of 1e-4 vanish in bf16 (spacing 2^-7 near 1) but add up in the master copy."""
    weight = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    optimizer = offloaded_optimizer(
        [weight], lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.0)
    )
    master = optimizer.param_groups[0]["params"][0]
    for _ in range(100):
        weight.grad = torch.ones(1, dtype=torch.bfloat16)
        optimizer.step()
    torch.testing.assert_close(master.detach(), torch.tensor([0.99]), rtol=0, atol=1e-5)
    assert float(weight.detach()) == float(torch.tensor(0.99).to(torch.bfloat16))
    with torch.no_grad():
        weight.fill_(2.0)  # changed between steps (a SCAFFOLD correction): its value wins
    weight.grad = torch.zeros(1, dtype=torch.bfloat16)
    optimizer.step()
    assert 1.99 < float(master.detach()) <= 2.0 and float(weight.detach()) == 2.0


def test_build_optimizer_offloads_only_when_asked() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    plain = build_optimizer([weight], ClientConfig())
    offloaded = build_optimizer([weight], ClientConfig(offload="optimizer"))
    assert plain.param_groups[0]["params"][0] is weight
    assert offloaded.param_groups[0]["params"][0] is not weight


@pytest.mark.parametrize("native", [False, True])
def test_auto_bf16_trains_exactly_as_the_setting_it_picks(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    auto_state, auto_metrics = train_from_start(ws, bf16="auto")
    picked_state, picked_metrics = train_from_start(ws, bf16=native)
    other_state, _ = train_from_start(ws, bf16=not native)
    assert auto_metrics["train_loss"] == picked_metrics["train_loss"]
    assert all(torch.equal(auto_state[k], picked_state[k]) for k in auto_state)
    assert not all(torch.equal(auto_state[k], other_state[k]) for k in auto_state)


def test_fp16_with_loss_scaling_follows_fp32_sgd(ws: Workspace) -> None:
    """SGD is not scale-invariant: a step on scaled gradients, or a clip of them before
    they are unscaled, would move the weights 65,536 times too far or too little."""
    fp32, _ = train_from_start(ws, optimizer="sgd", lr=0.5, max_grad_norm=1.0)
    fp16, _ = train_from_start(ws, optimizer="sgd", lr=0.5, max_grad_norm=1.0, fp16=True)
    moved = sum(float((fp32[n] - ws.initial[n]).norm()) for n in fp32)
    gap = sum(float((fp16[n] - fp32[n]).norm()) for n in fp32)
    assert moved > 0
    assert gap < 0.05 * moved, "fp16 with loss scaling must follow the fp32 trajectory"
    assert all(v.dtype == torch.float32 for v in fp16.values()), "master weights stay fp32"


class Blowup(torch.nn.Module):
    """Wraps a causal LM and multiplies its loss by 1e30: float16 gradients overflow."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=self.inner(**batch).loss * 1e30)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the skipped step
def test_fp16_skips_a_step_whose_gradients_overflow(ws: Workspace) -> None:
    overflowed, _ = train_from_start(
        ws, Blowup(ws.model), steps=1, optimizer="sgd", lr=0.5, fp16=True
    )
    assert all(torch.equal(overflowed[n], ws.initial[n]) for n in overflowed)
    trained, _ = train_from_start(ws, steps=1, optimizer="sgd", lr=0.5, fp16=True)
    assert any(not torch.equal(trained[n], ws.initial[n]) for n in trained)
