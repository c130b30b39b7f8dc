"""A model's input embeddings and per-example losses: what client-side cleaning scores,
and what FreeLB and the inference-time attacks perturb.

Every built-in method (LoRA, full fine-tuning, prompt, P-tuning and prefix tuning, IA3,
adapters) accepts ``inputs_embeds`` in place of ``input_ids``: prompt methods prepend
their virtual tokens to the embeddings they are given (checked on the tiny preset).
A model whose forward does not take them is refused by :func:`input_embeddings`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedllm.data import IGNORE_INDEX, Example, collate
from fedllm.eval.evaluate import LOSS_ROWS, aligned_targets, hidden_states_out
from fedllm.model.device import autocast, input_device
from fedllm.model.methods.base import MethodError


def input_embeddings(model: torch.nn.Module, who: str) -> torch.nn.Module:
    """The layer mapping token ids to ``model``'s input embeddings.

    Args:
        who: what needs them, for the error (e.g. ``"algorithm.freelb"``).

    Raises:
        MethodError: the model has no such layer, or its forward takes no
            ``inputs_embeds``.
    """
    get = getattr(model, "get_input_embeddings", None)
    layer = get() if callable(get) else None
    parameters = inspect.signature(model.forward).parameters
    takes = "inputs_embeds" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
    if not isinstance(layer, torch.nn.Module) or not takes:
        raise MethodError(
            f"{who} perturbs the input embeddings, but {type(model).__name__} "
            "has no input embedding layer or its forward takes no inputs_embeds; "
            "use a transformers causal LM (every built-in method.kind accepts them)"
        )
    return layer


@torch.no_grad()
def mean_token_losses(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    bf16: bool = False,
) -> np.ndarray:
    """Each example's mean token cross-entropy under ``model`` (nats per scored token;
    NaN where no token is scored), scored as training and :func:`fedllm.eval.evaluate`
    score them: input position ``i`` predicts label ``i + 1``, virtual tokens skipped.
    The model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    device = input_device(model)
    sums = np.zeros(len(examples), dtype=np.float64)
    counts = np.zeros(len(examples), dtype=np.int64)
    with hidden_states_out(model) as project:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            labels = batch.pop("labels")
            with autocast(device, bf16):
                out = model(**{k: v.to(device) for k, v in batch.items()}).logits
            targets = aligned_targets(labels, out.shape[1]).to(out.device)
            scored = targets != IGNORE_INDEX
            rows = scored.nonzero()[:, 0]
            hidden, wanted = out[scored], targets[scored]
            per_token = torch.empty(len(wanted), dtype=torch.float64, device=out.device)
            for lo in range(0, len(wanted), LOSS_ROWS):
                with autocast(device, bf16):
                    chunk = hidden[lo : lo + LOSS_ROWS]
                    logits = chunk if project is None else project(chunk)
                per_token[lo : lo + LOSS_ROWS] = F.cross_entropy(
                    logits.float(), wanted[lo : lo + LOSS_ROWS], reduction="none"
                ).double()
            per_example = torch.zeros(len(labels), dtype=torch.float64, device=out.device)
            per_example.index_add_(0, rows, per_token)
            stop = start + len(labels)
            sums[start:stop] = per_example.cpu().numpy()
            counts[start:stop] = scored.sum(dim=1).cpu().numpy()
            del out
    model.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def embedded_loss(
    model: torch.nn.Module,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Each row's mean token cross-entropy of ``model`` run on ``embeds``
    (``[batch, length, hidden]``): a ``[batch]`` tensor, differentiable in ``embeds``.
    Rows with no scored token get 0."""
    logits = model(inputs_embeds=embeds, attention_mask=attention_mask).logits
    targets = aligned_targets(labels.cpu(), logits.shape[1]).to(logits.device)
    per_token = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    scored = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / scored


def working_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype to perturb embeddings in: float32 under autocast (which casts them where
    the model multiplies), else the embedding weight's own (a model held in bf16 without
    autocast takes only bf16 inputs)."""
    return torch.float32 if torch.is_autocast_enabled(weight.device.type) else weight.dtype
