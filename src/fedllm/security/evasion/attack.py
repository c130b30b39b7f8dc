"""Adversarial examples against a trained run's model at inference (``fedllm attack``):
PGD on the prompts' input embeddings, and a greedy adversarial-suffix search, on the
run's held-out test prompts. Nothing is trained; the model is left as it was."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fedllm.data import Example
from fedllm.model.device import autocast, input_device
from fedllm.security.embeds import input_embeddings
from fedllm.security.evasion.pgd import Norm, Scale, pgd
from fedllm.security.evasion.prompts import Prompt, held_out_prompts
from fedllm.security.evasion.suffix import SuffixAttack, greedy_suffix

Tick = Callable[[int], None]
Progress = Callable[[str, int], AbstractContextManager[Tick]]
"""``progress(description, total)`` opens a bar and yields its advance."""

WHO = "fedllm attack"


class AttackError(ValueError):
    """A run that cannot be attacked as asked."""


def no_progress(description: str, total: int) -> AbstractContextManager[Tick]:
    """A :data:`Progress` that shows nothing."""
    del description, total
    return nullcontext(lambda n: None)


@dataclass(frozen=True)
class AttackOptions:
    """What ``fedllm attack`` does (its defaults take seconds on the tiny preset).

    Attributes:
        prompts: held-out test prompts attacked (the first that split into a prompt
            and a response).
        eps: PGD budgets (see ``scale``).
        norm: ``l2`` or ``linf``.
        scale: ``relative`` (a fraction of each prompt's embeddings' norm) or
            ``absolute`` (embedding units).
        pgd_steps: PGD steps per budget.
        batch_size: prompts per PGD batch.
        target: the reply the suffix search wants the model to start with.
        suffix_tokens: the suffix's length (the token budget).
        search_steps: search steps per prompt.
        candidates: suffixes scored per step.
        top_k: candidate tokens per position (gradient proposals) or drawn per
            position (random proposals).
        proposals: ``gradient`` (GCG's one-hot gradient) or ``random``.
        success_loss: a target loss (nats per token) that counts as success too.
        seed: fixes the search's draws.
    """

    prompts: int = 8
    eps: tuple[float, ...] = (0.01, 0.05, 0.1)
    norm: Norm = "l2"
    scale: Scale = "relative"
    pgd_steps: int = 10
    batch_size: int = 8
    target: str = "Sure, here is"
    suffix_tokens: int = 8
    search_steps: int = 20
    candidates: int = 32
    top_k: int = 64
    proposals: str = "gradient"
    success_loss: float | None = None
    seed: int = 0

    def check(self) -> None:
        """Raises AttackError naming the first option out of range."""
        counts = {
            "--prompts": self.prompts,
            "--pgd-steps": self.pgd_steps,
            "--batch-size": self.batch_size,
            "--suffix-tokens": self.suffix_tokens,
            "--candidates": self.candidates,
            "--top-k": self.top_k,
        }
        for option, value in counts.items():
            if value < 1:
                raise AttackError(f"{option} = {value}: must be at least 1")
        if self.search_steps < 0:
            raise AttackError(f"--search-steps = {self.search_steps}: must be at least 0")
        if any(e < 0 for e in self.eps):
            raise AttackError(f"--eps {list(self.eps)}: budgets must be >= 0")
        if not self.target:
            raise AttackError("--target is empty: give the reply the suffix should force")


def attack_model(
    model: torch.nn.Module,
    tokenizer: Any,
    test: Sequence[Example],
    options: AttackOptions,
    progress: Progress = no_progress,
    bf16: bool = False,
) -> dict[str, Any]:
    """Both attacks on the first ``options.prompts`` test prompts; JSON-ready. ``bf16``:
    run the model under bf16 autocast, as the run trained and evaluated it
    (:func:`fedllm.model.device.use_bf16` of ``client.bf16``).

    Raises:
        AttackError: no test example splits into a prompt and a response.
        MethodError: the model takes no input embeddings.
    """
    options.check()
    prompts = held_out_prompts(test, options.prompts, tokenizer)
    if not prompts:
        raise AttackError(
            f"none of the run's {len(test)} test examples has both a prompt and a scored "
            "response: nothing to attack (data.max_test_examples > 0?)"
        )
    embeddings = input_embeddings(model, WHO)
    was_training = model.training
    model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # gradients reach the perturbation only
        p.requires_grad_(False)
    try:
        with autocast(input_device(model), bf16):
            return {
                "prompts": len(prompts),
                "pgd": pgd_report(model, embeddings, prompts, tokenizer, options, progress),
                "suffix": suffix_report(model, embeddings, prompts, tokenizer, options, progress),
            }
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)


def pgd_report(
    model: torch.nn.Module,
    embeddings: torch.nn.Module,
    prompts: Sequence[Prompt],
    tokenizer: Any,
    options: AttackOptions,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Per budget: the mean clean and attacked loss of the reference responses, their
    difference, and each prompt's."""
    pad_id = int(tokenizer.pad_token_id)
    rows = []
    total = len(options.eps) * len(prompts)
    with progress(f"PGD ({options.norm}, {options.pgd_steps} steps)", total) as tick:
        for eps in options.eps:
            clean: list[float] = []
            attacked: list[float] = []
            budgets: list[float] = []
            norms: list[float] = []
            for lo in range(0, len(prompts), options.batch_size):
                chunk = prompts[lo : lo + options.batch_size]
                found = pgd(
                    model,
                    embeddings,
                    chunk,
                    eps,
                    options.pgd_steps,
                    pad_id,
                    options.norm,
                    options.scale,
                )
                clean += found.clean.tolist()
                attacked += found.attacked.tolist()
                budgets += found.budgets.tolist()
                norms += found.norms.tolist()
                tick(len(chunk))
            mean_clean, mean_attacked = sum(clean) / len(clean), sum(attacked) / len(attacked)
            rows.append(
                {
                    "eps": eps,
                    "clean_loss": mean_clean,
                    "attacked_loss": mean_attacked,
                    "increase": mean_attacked - mean_clean,
                    "per_prompt": [
                        {"clean": c, "attacked": a, "budget": b, "norm": n}
                        for c, a, b, n in zip(clean, attacked, budgets, norms, strict=True)
                    ],
                }
            )
    return {
        "norm": options.norm,
        "scale": options.scale,
        "steps": options.pgd_steps,
        "results": rows,
    }


def suffix_report(
    model: torch.nn.Module,
    embeddings: torch.nn.Module,
    prompts: Sequence[Prompt],
    tokenizer: Any,
    options: AttackOptions,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """The search on every prompt: its suffix, the target's loss before and after,
    success; and the success rate."""
    target = list(tokenizer(options.target, add_special_tokens=False)["input_ids"])
    weight = next(embeddings.parameters())
    allowed = torch.ones(weight.shape[0], dtype=torch.bool)
    special = [i for i in tokenizer.all_special_ids if 0 <= i < len(allowed)]
    allowed[special] = False
    generator = torch.Generator().manual_seed(options.seed)
    start_token = tokenizer("!", add_special_tokens=False)["input_ids"][0]
    start = torch.full((options.suffix_tokens,), int(start_token), dtype=torch.long)
    results = []
    with progress(f"suffix search ({options.suffix_tokens} tokens)", len(prompts)) as tick:
        for prompt in prompts:
            attack = SuffixAttack(model, embeddings, prompt, target, allowed, options.success_loss)
            propose = (
                attack.gradient_candidates(options.top_k)
                if options.proposals == "gradient"
                else attack.random_candidates(options.top_k, generator)
            )
            found = greedy_suffix(
                attack.score, propose, start, options.search_steps, options.candidates, generator
            )
            results.append(
                {
                    "prompt": tokenizer.decode(prompt.ids[: len(prompt.ids) - prompt.tail]),
                    "suffix_text": tokenizer.decode(found.suffix),
                    **asdict(found),
                }
            )
            tick(1)
    successes = sum(r["success"] for r in results)
    return {
        "target": options.target,
        "target_tokens": len(target),
        "suffix_tokens": options.suffix_tokens,
        "search_steps": options.search_steps,
        "candidates": options.candidates,
        "top_k": options.top_k,
        "proposals": options.proposals,
        "success_rate": successes / len(results),
        "per_prompt": results,
    }
