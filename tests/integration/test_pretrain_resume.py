"""Pre-training from scratch, DiLoCo (full parameters, kept inner AdamW, one schedule over
the run, uniform average, outer Nesterov): resume mid-run equals the uninterrupted run,
and the final model is a plain Hugging Face checkpoint."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedllm.config import Config, load_config
from fedllm.federation.runner import RunResult, resume, run
from fedllm.federation.setup import prepare
from fedllm.model.state import set_trainable_state
from tests.support.runs import ROOT, InterruptAfter, stable

SCRATCH = (
    "model.vocab_size=512",  # a small BPE vocabulary, trained once into the test cache
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.intermediate_size=64",
    "model.context_length=64",
    "data.num_clients=2",
    "data.seq_len=32",
    "data.max_examples_per_client=24",
    "data.max_eval_examples=4",
    "data.max_test_examples=8",
    "client.local_steps=3",
    "client.warmup_steps=2",  # of the 12 inner steps per client: warm-up, then cosine
    "client.batch_size=4",
    "server.clients_per_round=2",
    "server.rounds=4",
    "run.checkpoint_every=2",
    "eval.every=2",
)


def scratch_config() -> Config:
    """configs/pretrain_scratch.toml shrunk: a 2-layer Llama on pydoc, full, DiLoCo."""
    return load_config(ROOT / "configs" / "pretrain_scratch.toml", list(SCRATCH))


@pytest.fixture(scope="module", autouse=True)
def bpe_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDLLM_CACHE", str(tmp_path_factory.mktemp("fedllm-cache")))
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, RunResult]:
    """The uninterrupted run, and one killed after round 3 (checkpoint: 2), resumed."""
    root = tmp_path_factory.mktemp("pretrain")
    whole = run(scratch_config(), root / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(scratch_config(), root / "cut", reporter=InterruptAfter(3))
    return whole, resume(root / "cut")


def test_the_recipe_is_a_scratch_full_diloco_run() -> None:
    config = scratch_config()
    recipe = load_config(ROOT / "configs" / "pretrain_scratch.toml")
    client = recipe.client
    assert (client.optimizer, client.keep_optimizer_state, client.lr_schedule_span) == (
        "adamw",
        True,
        "run",
    )
    run_steps = client.local_steps * recipe.server.rounds
    assert client.lr_schedule == "cosine" and 0 < client.warmup_steps <= run_steps // 10
    assert recipe.server.weighting == config.server.weighting == "uniform"
    assert (config.model.name, config.model.tokenizer, config.method.kind) == (
        "llama-5m",
        "bpe",
        "full",
    )
    assert (config.server.optimizer, config.server.lr, config.server.momentum) == (
        "nesterov",
        0.7,
        0.9,
    )


def test_resume_mid_pretraining_equals_uninterrupted(runs: tuple[RunResult, RunResult]) -> None:
    whole, resumed = runs
    assert [r["round"] for r in resumed.records] == [0, 1, 2, 3, 4]
    assert stable(resumed.records) == stable(whole.records)
    assert stable(resumed.summary) == stable(whole.summary)
    for group in ("global", "optimizer"):  # the weights and Nesterov's momentum
        a = load_file(whole.run_dir / "checkpoints" / "round-00004" / f"{group}.safetensors")
        b = load_file(resumed.run_dir / "checkpoints" / "round-00004" / f"{group}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group
    clients = whole.run_dir / "checkpoints" / "round-00004" / "clients"
    kept = sorted(p.relative_to(clients) for p in clients.rglob("*.safetensors"))
    assert [str(p.parent) for p in kept] == ["optimizer"] * 2 + ["run_schedule"] * 2
    for path in kept:  # each client's inner AdamW and its place in the schedule
        a = load_file(clients / path)
        b = load_file(resumed.run_dir / "checkpoints" / "round-00004" / "clients" / path)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
    assert int(load_file(clients / kept[-1])["steps_done"]) == 12  # 4 rounds x 3 steps
    final = load_file(whole.run_dir / "final" / "model.safetensors")
    twin = load_file(resumed.run_dir / "final" / "model.safetensors")
    assert final.keys() == twin.keys() and all(torch.equal(final[k], twin[k]) for k in final)


def test_inner_rates_warm_up_once_and_decay_over_the_run(
    runs: tuple[RunResult, RunResult],
) -> None:
    """Each round's sum of inner rates, against lr 1e-3 with 2 warm-up steps
    (1e-3 (t + 1) / 3) and a cosine over the other 10 of 4 rounds x 3 steps."""

    def rate(t: int) -> float:
        return 1e-3 * (t + 1) / 3 if t < 2 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 10))

    whole, _ = runs
    for rnd, record in enumerate(whole.records[1:]):
        expected = sum(rate(t) for t in range(3 * rnd, 3 * rnd + 3))
        sums = [m["lr_sum"] for m in record["client_metrics"].values()]
        assert len(sums) == 2 and sums == pytest.approx([expected] * 2, rel=1e-12)


def test_rounds_record_tokens_and_communication_per_token(
    runs: tuple[RunResult, RunResult],
) -> None:
    whole, _ = runs
    for rec in whole.records[1:]:
        client_tokens = sum(m["tokens"] for m in rec["client_metrics"].values())
        assert rec["tokens"] == client_tokens > 0
        assert rec["bytes_per_token"] == (rec["bytes_up"] + rec["bytes_down"]) / rec["tokens"]
        assert rec["tokens_per_s"] == pytest.approx(rec["tokens"] / rec["time_s"]["train"])
        assert "mfu" not in rec  # CPU: no known peak without run.peak_tflops
    summary = whole.summary
    assert summary["tokens"] == sum(r["tokens"] for r in whole.records[1:])
    sent = summary["bytes_up"] + summary["bytes_down"]
    assert summary["bytes_per_token"] == sent / summary["tokens"]


def test_final_model_loads_with_transformers(runs: tuple[RunResult, RunResult]) -> None:
    whole, _ = runs
    final = whole.run_dir / "final"
    loaded = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert len(tokenizer) == loaded.config.vocab_size == 512
    ws = prepare(scratch_config(), with_data=False)
    ids = tokenizer("def mean(values):\n    return sum(values) / len(values)", return_tensors="pt")
    ws.model.eval()
    with torch.no_grad():
        untrained = ws.model(**ids).logits
        state = load_file(whole.run_dir / "checkpoints" / "round-00004" / "global.safetensors")
        set_trainable_state(ws.model, state)
        expected = ws.model(**ids).logits
        got = loaded(**ids).logits
    assert not torch.allclose(expected, untrained, atol=1e-3)  # the run did train
    torch.testing.assert_close(got, expected)
