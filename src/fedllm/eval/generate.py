"""Text generation from a trained model, through the tokenizer's chat template."""

from __future__ import annotations

from typing import Any

import torch

from fedllm.model.device import input_device
from fedllm.model.methods.prompt_learning import is_prompt_learning

MAX_TEMPERATURE = 100.0
"""Above this, sampling is uniform noise for any model: surely a typo."""


class GenerationError(ValueError):
    """Generation options that can't be honoured."""


def check_generation_options(max_new_tokens: int, temperature: float) -> None:
    """Refuse options transformers would reject with a traceback, or ignore silently.

    Raises:
        GenerationError: naming the option, the value and what is valid.
    """
    if max_new_tokens < 1:
        raise GenerationError(
            f"--max-new-tokens = {max_new_tokens}: must be at least 1 (tokens to generate)"
        )
    if not 0.0 <= temperature <= MAX_TEMPERATURE:  # also refuses nan
        raise GenerationError(
            f"--temperature = {temperature}: must be 0 (greedy) or a positive number up to "
            f"{MAX_TEMPERATURE:g} (sampling; 1 = the model's own distribution)"
        )


@torch.no_grad()
def generate_reply(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """The assistant's reply to ``prompt`` (greedy when ``temperature`` is 0).

    Prompt-learning models (prompt, prefix, P-tuning) decode with
    :func:`decode_without_cache`: peft's ``generate`` for them feeds the virtual
    tokens through a key/value cache argument that transformers 5 renamed, and
    silently drops or misplaces them after the first token.

    Raises:
        GenerationError: ``max_new_tokens`` below 1, or ``temperature`` negative,
            non-finite or absurdly large.
    """
    check_generation_options(max_new_tokens, temperature)
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(input_device(model))
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_prompt_learning(model):
            stop = _stop_ids(model, tokenizer)
            reply = decode_without_cache(
                model, inputs["input_ids"], max_new_tokens, temperature, stop
            )[0]
        else:
            reply = _generate(model, inputs, tokenizer.pad_token_id, max_new_tokens, temperature)
    return str(tokenizer.decode(reply, skip_special_tokens=True)).strip()


def decode_without_cache(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_ids: set[int],
) -> torch.Tensor:
    """New tokens after ``input_ids`` (one sequence), each step a full forward pass.

    Greedy when ``temperature`` is 0, else sampled from ``softmax(logits / temperature)``
    with the global torch RNG. Stops after a token in ``stop_ids`` (kept in the
    output). Costs ``max_new_tokens`` forward passes over the growing sequence:
    slower than a cached ``generate`` but exact for every method.

    Returns:
        the generated ids, shape ``[1, new_tokens]``.
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"decode_without_cache takes one sequence, got {input_ids.shape[0]}")
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, num_samples=1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, token.to(ids.dtype)], dim=1)
        if int(token) in stop_ids:
            break
    return ids[:, input_ids.shape[1] :]


def _generate(
    model: torch.nn.Module,
    inputs: Any,
    pad_id: int,
    max_new_tokens: int,
    temperature: float,
) -> torch.Tensor:
    """transformers' cached ``generate``: the reply's ids (one sequence)."""
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id,
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        options["temperature"] = temperature
    generate: Any = model.generate
    output: torch.Tensor = generate(**inputs, **options)
    return output[0, inputs["input_ids"].shape[1] :]


def _stop_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's and the model's generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    return ids
