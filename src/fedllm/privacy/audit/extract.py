"""Extraction: prompt the model with a canary's prefix and read what it completes, greedily."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from fedllm.data.canary import CHAT_PROMPT
from fedllm.model.device import input_device

_DIGITS = re.compile(r"\s*(\d+)")


@dataclass(frozen=True)
class Extraction:
    """What greedy decoding from a canary's prefix gave.

    Attributes:
        completion: the decoded new tokens (special tokens dropped).
        digits: the run of digits the completion starts with (after spaces), or "".
        reproduced: those digits are exactly the secret (no digit more or less).
    """

    completion: str
    digits: str
    reproduced: bool

    def to_json(self) -> dict[str, object]:
        return {"completion": self.completion, "digits": self.digits, "reproduced": self.reproduced}


def prompt_ids(prefix: str, kind: str, tokenizer: Any) -> list[int]:
    """The tokens an extraction starts from: for ``"chat"`` the canary's user turn, the
    assistant's header and ``prefix``; for ``"text"`` ``prefix`` alone. Trailing spaces
    of the prefix are left to the model (tokenizers join a space to the next word)."""
    head = prefix.rstrip()
    if kind == "chat":
        messages = [{"role": "user", "content": CHAT_PROMPT}]
        text = str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
        head = text + head
    return list(tokenizer(head, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def greedy_completion(
    model: torch.nn.Module, ids: list[int], max_new_tokens: int, stop: set[int]
) -> list[int]:
    """The argmax continuation of ``ids``, one full forward pass per token (no key/value
    cache, so prompt-learning models decode like the others), stopping at a ``stop`` id."""
    was_training = model.training
    model.eval()
    device = input_device(model)
    current = torch.tensor([ids], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        mask = torch.ones_like(current)
        logits = model(input_ids=current, attention_mask=mask).logits
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        new.append(token)
        current = torch.cat([current, torch.tensor([[token]], device=device)], dim=1)
    model.train(was_training)
    return new


def extract(
    model: torch.nn.Module, tokenizer: Any, prefix: str, secret: str, kind: str
) -> Extraction:
    """Greedy completion of ``prefix`` for a few tokens more than the secret has digits,
    and whether it is the secret."""
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if isinstance(t, int)}
    new = greedy_completion(model, prompt_ids(prefix, kind, tokenizer), len(secret) + 4, stop)
    completion = str(tokenizer.decode(new, skip_special_tokens=True))
    match = _DIGITS.match(completion)
    digits = match.group(1) if match else ""
    return Extraction(completion=completion, digits=digits, reproduced=digits == secret)
