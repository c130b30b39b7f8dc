"""Every method.kind end to end on the tiny model: a round, the exchanged state,
export and reload, evaluation against the model's own loss, generation, merging."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedllm.cli import main
from fedllm.data import FederatedData, collate
from fedllm.eval.evaluate import evaluate
from fedllm.eval.generate import generate_reply
from fedllm.federation.runner import RunResult, run
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.load import load_base_model
from fedllm.model.methods.adapter import load_adapter
from fedllm.model.state import set_trainable_state
from fedllm.types import Params
from tests.support.generation import greedy_reference
from tests.support.runs import tiny_config

KINDS = ["lora", "full", "prompt", "prefix", "ptuning", "ia3", "adapter"]
UNMERGEABLE = ["prompt", "prefix", "ptuning", "adapter"]

# The tiny preset: hidden 64, 2 layers, 4 heads of 16, 2 key/value heads, MLP 128.
HIDDEN, LAYERS, KV_DIM, MLP = 64, 2, 32, 128
V, ENC, SIZE, R = 3, 16, 8, 4  # virtual tokens, encoder width, adapter width, LoRA rank (tiny.toml)
SMALL = (f"method.num_virtual_tokens={V}", f"method.encoder_hidden_size={ENC}")
SMALL += (f"method.adapter_size={SIZE}", "client.local_steps=1", "server.rounds=1")
SMALL += ("data.max_eval_examples=4", "data.max_test_examples=4")

# Trainable parameter count of each method by hand.
EXPECTED_COUNT = {
    "lora": LAYERS * (R * (HIDDEN + HIDDEN) + R * (HIDDEN + KV_DIM)),  # q_proj, v_proj
    "full": 3_219_776,
    "prompt": V * HIDDEN,
    "prefix": V * LAYERS * 2 * KV_DIM,  # a key and a value per layer and virtual token
    "ptuning": V * HIDDEN + (HIDDEN * ENC + ENC) + (ENC * ENC + ENC) + (ENC * HIDDEN + HIDDEN),
    "ia3": LAYERS * (KV_DIM + KV_DIM + MLP),  # k_proj, v_proj outputs; down_proj input
    "adapter": LAYERS * (2 * HIDDEN * SIZE + HIDDEN + SIZE),
}


def key_is_the_methods(kind: str, key: str) -> bool:
    """Whether exchanged key ``key`` is a parameter ``kind`` trains."""
    if kind == "lora":
        return ".lora_A." in key or ".lora_B." in key
    if kind in ("prompt", "prefix"):
        return key == "prompt_encoder.default.embedding.weight"
    if kind == "ptuning":
        return key.startswith("prompt_encoder.default.") and ("embedding" in key or "mlp" in key)
    if kind == "ia3":
        return key.endswith(".ia3_l.default") and key.split(".")[-3] in {
            "k_proj",
            "v_proj",
            "down_proj",
        }
    if kind == "adapter":
        return ".mlp.adapter." in key
    return True  # full: everything


@dataclass
class Trained:
    result: RunResult
    ws: Workspace  # a fresh workspace with the trained global state loaded
    state: Params


class Runs:
    """One federated round per method, run on first use and shared by the tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, Trained] = {}
        self.data: FederatedData | None = None  # the same for every method: built once

    def __call__(self, kind: str) -> Trained:
        if kind not in self.done:
            cfg = tiny_config(f'method.kind="{kind}"', *SMALL)
            result = run(cfg, self.root / kind)
            state = load_file(result.run_dir / "checkpoints" / "round-00001" / "global.safetensors")
            ws = prepare(cfg, with_data=self.data is None)
            self.data = ws.data = ws.data or self.data
            set_trainable_state(ws.model, state)
            ws.model.eval()
            self.done[kind] = Trained(result, ws, state)
        return self.done[kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("matrix"))


def a_batch(ws: Workspace) -> dict[str, torch.Tensor]:
    """Four chat examples of different lengths (right-padded), labels on the answers."""
    assert ws.data is not None
    client = next(iter(ws.data.clients.values()))
    return collate(list(client.eval[:2]) + list(client.train[:2]), ws.pad_id)


@pytest.mark.parametrize("kind", KINDS)
def test_a_round_moves_exactly_the_methods_parameters(runs: Runs, kind: str) -> None:
    trained = runs(kind)
    initial, state = trained.ws.initial, trained.state
    assert set(state) == set(initial)
    assert all(key_is_the_methods(kind, key) for key in state), sorted(state)
    assert sum(t.numel() for t in state.values()) == EXPECTED_COUNT[kind]
    assert any(not torch.equal(state[k], initial[k]) for k in state), "the round changed nothing"
    summary = trained.result.summary
    assert summary["trainable_parameters"] == EXPECTED_COUNT[kind]
    raw = sum(t.numel() * t.element_size() for t in state.values())
    assert raw <= summary["payload_bytes"] < raw + 4096  # tensors plus a small header


@pytest.mark.parametrize("kind", KINDS)
def test_export_reloads_to_identical_logits(runs: Runs, kind: str) -> None:
    trained = runs(kind)
    cfg = trained.ws.config
    final = trained.result.run_dir / "final"
    base = load_base_model(cfg.model, cfg.seed)
    reloaded: torch.nn.Module
    if kind == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(final)
    elif kind == "adapter":
        reloaded = load_adapter(base, final)
    else:
        reloaded = PeftModel.from_pretrained(base, final)
    reloaded.eval()
    batch = a_batch(trained.ws)
    del batch["labels"]
    with torch.no_grad():
        expected = trained.ws.model(**batch).logits
        untrained = load_base_model(cfg.model, cfg.seed)(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(expected[:, -untrained.shape[1] :], untrained), "trained == base"


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_scores_what_the_models_own_loss_scores(runs: Runs, kind: str) -> None:
    ws = runs(kind).ws
    batch = a_batch(ws)
    assert bool((batch["labels"][:, 1:] != -100).any())
    with torch.no_grad():
        own = float(ws.model(**batch).loss)
    assert ws.data is not None
    client = next(iter(ws.data.clients.values()))
    examples = list(client.eval[:2]) + list(client.train[:2])
    held = evaluate(ws.model, examples, batch_size=len(examples), pad_id=ws.pad_id)
    assert held.tokens == int((batch["labels"][:, 1:] != -100).sum())
    assert held.loss == pytest.approx(own, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_replies_with_every_method(runs: Runs, kind: str) -> None:
    ws = runs(kind).ws
    reply = generate_reply(ws.model, ws.tokenizer, "What is an apple?", max_new_tokens=4)
    expected = greedy_reference(ws.model, ws.tokenizer, "What is an apple?", new_tokens=4)
    assert reply == expected


@pytest.mark.parametrize("kind", UNMERGEABLE)
def test_export_merge_explains_why_it_cannot(
    runs: Runs, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs(kind).result.run_dir
    target = tmp_path / "merged"
    capsys.readouterr()
    assert main(["export", str(run_dir), "--to", str(target), "--merge"]) == 2
    err = capsys.readouterr().err
    assert f"method.kind = '{kind}' cannot be merged" in " ".join(err.split())
    assert not target.exists(), "nothing is written when merging is impossible"
