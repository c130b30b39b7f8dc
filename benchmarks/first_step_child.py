"""The two processes `first_step` times: fedllm's run, and the plain script a user would write.

Each registers a global optimizer-step hook right after ``import torch``; at the first
optimizer step it prints ``{"first_step_s": ...}`` (seconds since ``$FIRST_STEP_T0``,
the parent's wall clock just before it started the process) and exits at once.

The plain script (transformers + peft only, no fedllm): load the tokenizer and the model
from fedllm's cache (or build the preset's config from scratch), chat-template and
tokenize every conversation of the job in one call, make LoRA (peft), score the held-out
conversations with ``model(**batch).loss``, then train on the first batch.

Usage: python -m benchmarks.first_step_child plain JOB.json
       python -m benchmarks.first_step_child fedllm run CONFIG [fedllm options]
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

T0 = float(os.environ["FIRST_STEP_T0"])


def _report_first_step(*_: Any) -> None:
    print(json.dumps({"first_step_s": time.time() - T0}), flush=True)
    os._exit(0)


register_optimizer_step_post_hook(_report_first_step)


def plain(job: dict[str, Any]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from benchmarks.plain_job import held_out_loss, pad

    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer_dir"])
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    texts = tokenizer.apply_chat_template(job["conversations"], tokenize=False)
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=job["seq_len"])
    examples = [(x, x) for x in ids["input_ids"]]
    if job["model_dir"] is not None:
        model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**job["model_config"]))
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **job["lora"]))
    held_out = [examples[i] for i in job["held_out"]]
    held_out_loss(model, held_out, job["eval_batch"], pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job["lr"])
    model.train()
    model(**pad(examples[: job["batch_size"]], pad_id)).loss.backward()
    optimizer.step()


def main() -> None:
    if sys.argv[1] == "plain":
        with open(sys.argv[2], encoding="utf-8") as f:
            plain(json.load(f))
    else:
        from fedllm.cli import main as fedllm_main

        sys.argv = ["fedllm", *sys.argv[2:]]
        fedllm_main()
    raise SystemExit("no optimizer step was taken")


if __name__ == "__main__":
    main()
