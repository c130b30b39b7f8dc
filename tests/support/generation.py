"""An independent greedy decoder, to check what `generate_reply` answers."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def greedy_reference(model: torch.nn.Module, tokenizer: Any, prompt: str, new_tokens: int) -> str:
    """The greedy reply to ``prompt`` by a plain loop: one full forward pass per token,
    the argmax of the last position, stopping after an end-of-sequence token."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    stop = {tokenizer.eos_token_id, *_generation_eos(model)}
    start = ids.shape[1]
    model.eval()
    for _ in range(new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        token = logits[0, -1].float().argmax()
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
        if int(token) in stop:
            break
    return str(tokenizer.decode(ids[0, start:], skip_special_tokens=True)).strip()


def _generation_eos(model: torch.nn.Module) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        return {eos}
    return set(eos) if isinstance(eos, list) else set()
