"""`fedllm data partition` on the tiny recipe: table, JSON statistics and heat map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.data.heterogeneity import label_emd
from tests.support.runs import TINY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_partition_of_tiny_writes_json_and_heat_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["data", "partition", str(TINY)]) == 0
    out = tmp_path / "runs" / "partition-tiny"  # the default folder
    assert (out / "heatmap.png").read_bytes().startswith(PNG_MAGIC)
    stats = json.loads((out / "partition.json").read_text())
    assert stats["data"]["partition"] == "natural" and stats["label_field"] == "category"
    clients = stats["clients"]
    assert len(clients) == stats["summary"]["num_clients"] == 4
    # natural by category: every client is one category, so it holds a single label
    assert stats["summary"]["labels_per_client"] == 1.0
    total = [sum(c["label_counts"][j] for c in clients) for j in range(len(stats["labels"]))]
    for c in clients:
        assert c["label_emd"] == pytest.approx(label_emd(c["label_counts"], total))
        assert 0.0 < c["token_jsd"] < 1.0
        assert c["train"] > 0 and c["eval"] > 0
    printed = capsys.readouterr().out
    for c in clients:
        assert c["client"] in printed
    assert "token JSD" in printed and "label_emd_mean" in printed


def test_topic_partition_of_tiny_labels_clients_by_topic(tmp_path: Path) -> None:
    out = tmp_path / "topic"
    overrides = ["--set", "data.partition=topic", "--set", "data.num_topics=4"]
    assert main(["data", "partition", str(TINY), *overrides, "--out", str(out)]) == 0
    stats = json.loads((out / "partition.json").read_text())
    assert stats["label_field"] == "topic"
    assert 1 <= len(stats["labels"]) <= 4
    assert all(name.startswith("t") for name in stats["labels"])
    assert (out / "heatmap.png").read_bytes().startswith(PNG_MAGIC)
    # an earlier result is replaced only on request (as fedllm run --overwrite)
    assert main(["data", "partition", str(TINY), *overrides, "--out", str(out)]) == 2
    again = ["data", "partition", str(TINY), *overrides, "--out", str(out), "--overwrite"]
    assert main(again) == 0


def test_impossible_partition_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["--set", "data.partition=shards", "--set", "data.labels_per_client=30"]
    code = main(["data", "partition", str(TINY), *overrides, "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.labels_per_client = 30" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
