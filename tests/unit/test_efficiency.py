"""Efficiency metrics: tokens per round, tokens/s, bytes per token, MFU, frozen-base FLOPs."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaForCausalLM

from fedllm.client.side import ClientSide
from fedllm.client.train import train_locally
from fedllm.config import ClientConfig
from fedllm.data import IGNORE_INDEX, Example
from fedllm.federation.efficiency import Efficiency
from fedllm.federation.setup import prepare
from fedllm.model.flops import describe_flops, flops_per_token, matmul_parameters
from fedllm.model.presets import llama_config, preset_spec
from fedllm.protocol.screen import read_update
from fedllm.protocol.tally import Tally
from fedllm.report.progress import RichReporter, result_table
from fedllm.types import ClientUpdate, RoundRecord
from fedllm.wire import encode_message
from tests.support.runs import stable, tiny_config


def update(client: str, tokens: object) -> ClientUpdate:
    metrics: dict[str, Any] = {"train_loss": 1.0, "tokens": tokens}  # a client may send junk
    metrics["label_tokens"] = tokens / 4 if isinstance(tokens, float) else tokens
    return ClientUpdate(client, {"w": torch.zeros(4)}, 1, metrics)


def test_training_counts_input_tokens_without_padding_and_label_tokens_apart() -> None:
    """Instruction-style examples of unequal length: padding is no work done, the
    prompt is (it goes through the model) but is not scored."""
    ws = prepare(tiny_config(), with_data=False)
    prompt, reply = [5, 6, 7, 8, 9], [10, 11, 12]
    masked = [IGNORE_INDEX] * len(prompt)
    examples = [
        Example(prompt + reply, masked + reply),  # 8 tokens, 3 scored
        Example(prompt[:2] + reply[:1], masked[:2] + reply[:1]),  # 3 tokens, 1 scored
    ]
    cfg = ClientConfig(local_steps=3, batch_size=2, grad_accum=2)
    metrics = train_locally(ws.model, examples, cfg, steps=3, seed=0, pad_id=ws.pad_id)
    micro_batches = 3 * 2  # each holds both examples (batch_size = the data)
    assert metrics["tokens"] == micro_batches * (8 + 3)
    assert metrics["label_tokens"] == micro_batches * (3 + 1)


def test_tally_counts_every_trained_token() -> None:
    record = RoundRecord(round=1)
    tally = Tally(record)
    for client, tokens in (("a", 100.0), ("b", 60.0), ("c", float("nan")), ("d", "many")):
        reply = ClientSide.reply(update(client, tokens))
        tally.received(client, reply)
        tally.trained(read_update(client, reply))
    tally.accept(update("a", 100.0))
    tally.reject(update("b", 60.0), "rejected updates were trained all the same")
    tally.close()
    assert record.extra["tokens"] == 160  # malformed counts are ignored
    assert record.extra["tokens_per_s"] == pytest.approx(160 / record.time_s["train"])
    assert record.extra["label_tokens"] == 40  # (100 + 60) / 4; NaN's quarter is NaN
    assert record.extra["label_tokens_per_s"] == pytest.approx(40 / record.time_s["train"])
    one = len(encode_message(ClientSide.reply(update("a", 100.0))))  # sizes: names, not values
    assert record.bytes_up == 4 * one  # bytes still counted


def test_annotate_gives_bytes_per_token_and_mfu() -> None:
    record = RoundRecord(round=3, bytes_up=3000, bytes_down=1000)
    record.extra.update({"tokens": 500, "tokens_per_s": 2000.0})
    Efficiency(flops_per_token=6_000_000, peak_flops=1e12).annotate(record)
    assert record.extra["bytes_per_token"] == 8.0
    assert record.extra["mfu"] == pytest.approx(6e6 * 2000 / 1e12)
    unknown = RoundRecord(round=1, bytes_up=10)
    unknown.extra.update({"tokens": 0})
    Efficiency(flops_per_token=6_000_000, peak_flops=None).annotate(unknown)
    assert "mfu" not in unknown.extra and "bytes_per_token" not in unknown.extra


def test_summary_totals_over_the_run() -> None:
    records = [
        {"round": 0, "time_s": {"eval": 9.0}},
        {"round": 1, "tokens": 300, "bytes_up": 600, "bytes_down": 300, "time_s": {"train": 2.0}},
        {"round": 2, "tokens": 100, "bytes_up": 200, "bytes_down": 100, "time_s": {"train": 2.0}},
    ]
    records[1]["label_tokens"], records[2]["label_tokens"] = 120, 40
    summary = Efficiency(flops_per_token=10, peak_flops=1000.0).summary(records)
    assert summary["tokens"] == 400
    assert summary["bytes_per_token"] == 1200 / 400
    assert summary["tokens_per_s"] == 100.0
    assert summary["mfu"] == 10 * 100.0 / 1000.0
    assert summary["label_tokens"] == 160 and summary["label_tokens_per_s"] == 40.0
    assert stable(summary) == {
        "tokens": 400,
        "label_tokens": 160,
        "train_flops_per_token": 10,
        "bytes_per_token": 3.0,
    }


def test_frozen_base_flops_equal_torch_flop_counter() -> None:
    """A frozen base: activation gradients flow back to the input, no weight gradients."""
    config = llama_config(preset_spec("tiny", {"tie_embeddings": False}), vocab_size=300)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).requires_grad_(False)
    batch, seq = 2, 16
    embeds = model.get_input_embeddings()(torch.randint(0, 300, (batch, seq)))
    embeds.requires_grad_(True)  # what enable_input_require_grads does for PEFT methods
    with FlopCounterMode(display=False) as counter:
        model(inputs_embeds=embeds).logits.sum().backward()
    per_token = flops_per_token(config, seq, frozen_base=True)
    assert counter.get_total_flops() == batch * seq * per_token
    n = matmul_parameters(config)
    assert per_token == flops_per_token(config, seq) - 2 * n
    assert "(4N + 12LHQT, T = 16)" in describe_flops(model, seq, frozen_base=True)


@pytest.mark.parametrize(("kind", "frozen"), [("lora", True), ("full", False)])
def test_efficiency_of_a_workspace(kind: str, frozen: bool) -> None:
    ws = prepare(
        tiny_config(f"method.kind='{kind}'", "run.peak_tflops=0.5", "data.seq_len=40"),
        with_data=False,
    )
    eff = Efficiency.of(ws)
    base = llama_config(preset_spec("tiny"))
    assert eff.flops_per_token == flops_per_token(base, 40, frozen_base=frozen)
    assert eff.peak_flops == 0.5e12
    assert Efficiency.of(prepare(tiny_config(), with_data=False)).peak_flops is None  # CPU


def test_progress_line_and_report_table_show_tokens_per_s() -> None:
    line, table = StringIO(), StringIO()
    record = RoundRecord(round=1, train_loss=2.0)
    record.extra.update({"tokens_per_s": 12345.6, "mfu": 0.4321})
    RichReporter(Console(file=line, width=200, force_terminal=False)).round_done(record)
    assert "12,346 tok/s" in line.getvalue() and "MFU 43.2%" in line.getvalue()
    Console(file=table, width=200).print(result_table([record.to_json()]))
    assert "tok/s" in table.getvalue() and "12346" in table.getvalue()
