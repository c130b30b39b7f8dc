"""Where a run trains: device choice, model placement, autocast and device peak FLOP/s.

``run.device`` picks the training device (``"cpu"``, ``"cuda"`` or
``"auto"``); ``model.device_map`` spreads a model over several GPUs with
accelerate instead. The exchanged state, the server and the checkpoints stay
in CPU memory whatever the device (:func:`fedllm.model.state.get_trainable_state`
copies to the CPU): only the model and a client's optimizer live on the GPU.

The CUDA-only options (``client.fp16``, ``client.offload``,
``model.device_map``) are refused at config load with ``run.device = "cpu"``
and by :func:`resolve_device` when no GPU is visible, naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal

import torch

from fedllm.settings import ConfigError

if TYPE_CHECKING:  # the whole config is read here, never built: no import cycle
    from fedllm.config import Config

PEAK_BF16_TFLOPS: tuple[tuple[frozenset[str], float], ...] = (
    (frozenset({"H200"}), 989.0),
    (frozenset({"GH200"}), 989.0),
    (frozenset({"H100", "PCIE"}), 756.0),
    (frozenset({"H100", "NVL"}), 835.0),
    (frozenset({"H100"}), 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (frozenset({"A100"}), 312.0),
    (frozenset({"L40S"}), 362.0),
    (frozenset({"L4"}), 121.0),
)
"""Dense bf16 tensor-core peak TFLOP/s (no sparsity) of known CUDA GPUs, from NVIDIA's
data sheets, by words of ``torch.cuda.get_device_name()``; the first match wins."""


class DeviceError(ConfigError):
    """A device option that this machine cannot honour (no GPU, layers spilled to CPU)."""


def resolve_device(config: Config, cuda_available: bool | None = None) -> torch.device:
    """The device clients train on: ``run.device``, with ``"auto"`` resolved.

    Args:
        config: the run's configuration.
        cuda_available: whether a GPU is usable; None: ``torch.cuda.is_available()``.

    Raises:
        DeviceError: ``run.device = "cuda"`` without a GPU, or a CUDA-only option
            (``client.fp16``, ``client.offload``, ``model.device_map``) when
            ``"auto"`` found none.
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    wanted = config.run.device
    if wanted == "cuda" and not available:
        raise DeviceError(
            f"config error: run.device = 'cuda' but {_no_cuda_reason()}; "
            "set run.device = 'cpu' or 'auto'"
        )
    if wanted == "cuda" or (wanted == "auto" and available):
        return torch.device("cuda")
    settings = _cuda_only_settings(config)
    if settings:
        why = (
            "run.device = 'cpu'"
            if wanted == "cpu"
            else f"run.device = 'auto' and {_no_cuda_reason()}"
        )
        raise DeviceError(
            f"config error: {settings[0]} needs a CUDA GPU, but {why}; run on a GPU machine "
            f"or remove {settings[0].split(' = ')[0]}"
        )
    return torch.device("cpu")


def _cuda_only_settings(config: Config) -> list[str]:
    settings = []
    if config.client.fp16:
        settings.append("client.fp16 = true")
    if config.client.offload != "none":
        settings.append(f"client.offload = {config.client.offload!r}")
    if config.model.device_map is not None:
        settings.append(f"model.device_map = {config.model.device_map!r}")
    return settings


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch.cuda.is_available() is false (torch {torch.__version__} has no CUDA support)"
    return "torch.cuda.is_available() is false (no GPU is visible)"


def place_model(model: torch.nn.Module, device: torch.device, device_map: str | None) -> None:
    """Move ``model`` to ``device``, unless accelerate already dispatched it (``device_map``)."""
    if device_map is None and device.type != "cpu":
        model.to(device)


def check_device_map(device_map: Mapping[str, int | str | torch.device]) -> None:
    """Refuse a device map that puts modules on the CPU or disk: training needs them on GPUs.

    Raises:
        DeviceError: naming ``model.device_map`` and the modules left off the GPUs.
    """
    off = [name or "<whole model>" for name, dev in device_map.items() if _off_gpu(dev)]
    if off:
        shown = ", ".join(off[:5]) + (f", ... ({len(off) - 5} more)" if len(off) > 5 else "")
        raise DeviceError(
            f"config error: model.device_map placed {shown} on the CPU or disk (no GPU, or the "
            "GPUs' memory is full); training through offloaded layers is not supported: use "
            "more or larger GPUs, model.dtype = 'bfloat16', or a smaller model"
        )


def _off_gpu(dev: int | str | torch.device) -> bool:
    if isinstance(dev, int):  # a GPU index
        return False
    if dev == "disk":
        return True
    return torch.device(dev).type != "cuda"


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch for ``model`` goes: the device of its input embeddings."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if isinstance(embeddings, torch.nn.Module):
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.device
    return next(model.parameters()).device


def model_devices(model: torch.nn.Module) -> list[torch.device]:
    """The distinct devices ``model``'s parameters live on, in order of first use."""
    seen: dict[str, torch.device] = {}
    for param in model.parameters():
        seen.setdefault(str(param.device), param.device)
    return list(seen.values())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: a CUDA GPU with bf16 support, a
    CPU with AVX-512 BF16 or AMX (where bf16 matmuls run at about twice the fp32 rate;
    elsewhere autocast would emulate them, slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)
    return False


def use_bf16(setting: bool | Literal["auto"], device: torch.device) -> bool:
    """``client.bf16`` on ``device``: ``'auto'`` is :func:`native_bf16`."""
    return native_bf16(device) if setting == "auto" else setting


def resolved_dtype(config: Config, device: torch.device) -> Config:
    """``config`` with ``model.dtype = 'auto'`` made concrete for ``device``: bfloat16
    where :func:`native_bf16` and the method freezes the base, else float32."""
    if config.model.dtype != "auto":
        return config
    frozen = config.method.kind != "full"
    dtype = "bfloat16" if frozen and native_bf16(device) else "float32"
    model = config.model.model_copy(update={"dtype": dtype})
    return config.model_copy(update={"model": model})


def precision_label(setting: bool | Literal["auto"], device: torch.device) -> str:
    """What the banner says: ``bf16 autocast`` or ``fp32``, with ``(auto)`` when chosen."""
    chosen = "bf16 autocast" if use_bf16(setting, device) else "fp32"
    return f"{chosen} (auto)" if setting == "auto" else chosen


def autocast(device: torch.device, bf16: bool, fp16: bool = False) -> AbstractContextManager[None]:
    """``torch.autocast`` on ``device``'s type: bfloat16, float16, or off when neither."""
    dtype = torch.float16 if fp16 else torch.bfloat16
    context: AbstractContextManager[None] = torch.autocast(
        device.type, dtype=dtype, enabled=bf16 or fp16
    )
    return context


def device_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of the CUDA GPU called ``name``; None if not in the table."""
    words = set(re.split(r"[\s\-_]+", name.upper()))
    return next((peak for needed, peak in PEAK_BF16_TFLOPS if needed <= words), None)


def peak_flops(devices: list[torch.device], override_tflops: float | None) -> float | None:
    """Peak FLOP/s of the devices a model trains on, for the MFU estimate.

    Args:
        devices: the model's devices (see :func:`model_devices`).
        override_tflops: ``run.peak_tflops``, which wins when set.

    Returns:
        ``override_tflops`` x 1e12; else the sum of the table's peaks of the CUDA
        devices (model parallelism counts every GPU it occupies); None on the
        CPU or for a GPU not in the table.
    """
    if override_tflops is not None:
        return override_tflops * 1e12
    if not devices or any(d.type != "cuda" for d in devices):
        return None
    peaks = [device_peak_tflops(torch.cuda.get_device_name(d)) for d in devices]
    if any(p is None for p in peaks):
        return None
    return sum(p for p in peaks if p is not None) * 1e12
