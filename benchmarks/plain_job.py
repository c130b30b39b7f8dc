"""The plain script a user would write for the job `memory_vs_plain` measures: transformers
and peft only, no fedllm.

It loads the model from the converted directory, makes it trainable (LoRA through peft,
or every weight), trains with AdamW and gradient clipping on the batches it is given,
one after the other, and scores the held-out examples with ``model(**batch).loss`` before
training and after every ``steps_per_eval`` steps. It prints its peak RSS (MiB) as JSON.

Usage: python -m benchmarks.plain_job JOB.pt   (written by benchmarks/memory_vs_plain.py)
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

IGNORE = -100


def pad(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (input ids, labels) pairs into tensors."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def held_out_loss(model: Any, examples: list[Any], batch_size: int, pad_id: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(examples), batch_size):
        total += float(model(**pad(examples[start : start + batch_size], pad_id)).loss)
    model.train()
    return total


def main() -> None:
    job = torch.load(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    if job["lora"] is not None:
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **job["lora"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job["lr"])
    model.train()
    held_out_loss(model, job["eval"], job["eval_batch"], job["pad_id"])
    for step, batch in enumerate(job["batches"], start=1):
        loss = model(**pad(batch, job["pad_id"])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, job["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % job["steps_per_eval"] == 0:
            held_out_loss(model, job["eval"], job["eval_batch"], job["pad_id"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
