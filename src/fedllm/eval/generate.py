"""Text generation from a trained model, through the tokenizer's chat template."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def generate_reply(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """The assistant's reply to ``prompt`` (greedy when ``temperature`` is 0)."""
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    model.eval()
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        options["temperature"] = temperature
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generate: Any = model.generate
        output = generate(**inputs, **options)
    reply = output[0, inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(reply, skip_special_tokens=True)).strip()
