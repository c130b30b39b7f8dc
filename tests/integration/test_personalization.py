"""Personal parameters: never uploaded, kept per client, used in its evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedllm.algorithms.personal.split import PersonalSplit
from fedllm.federation.modes import FederatedMode, ModeError, build_mode
from fedllm.federation.rundir import RunDir
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.federation.trained import load_trained
from fedllm.message import Message
from fedllm.wire import decode_message, encode_message
from tests.support.runs import InterruptAfter, stable, tiny_config

PERSONAL = ("personal.keys=['*lora_B*']",)


def test_personal_parameters_never_leave_the_client(tmp_path: Path) -> None:
    ws = prepare(tiny_config(*PERSONAL, "server.clients_per_round=4"))
    mode = build_mode(ws, tmp_path)
    assert isinstance(mode, FederatedMode)
    sent: list[bytes] = []
    handler = mode.engine.handler

    def wire_tap(client_id: str, phase: str, message: Message) -> Message:
        reply = handler(client_id, phase, message)
        sent.append(encode_message(reply))  # what would cross the network
        return reply

    mode.engine.handler = wire_tap
    record = mode.play_round(1, None)
    assert len(sent) == 4 and record.accepted
    for payload in sent:
        keys = set(decode_message(payload).arrays)
        assert keys and not any("lora_B" in k for k in keys)
        assert keys == set(mode.state.params)
    assert record.bytes_up == sum(len(p) for p in sent)

    own = tmp_path / "clients" / "personal"
    stored = {cid: load_file(own / f"{cid}.safetensors") for cid in mode.clients}
    first, second = list(stored.values())[:2]
    assert all("lora_B" in k for k in first)
    assert any(not torch.equal(first[k], second[k]) for k in first), "each client its own"


def test_personalised_run_reports_both_views_and_resumes_exactly(tmp_path: Path) -> None:
    overrides = (*PERSONAL, "server.rounds=3", "run.checkpoint_every=1")
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    final = whole.records[-1]["eval"]
    assert "clients_ppl_mean" in final and "global_only/clients_ppl_mean" in final
    assert final["clients_ppl_mean"] != final["global_only/clients_ppl_mean"]
    exported = sorted(p.name for p in (whole.run_dir / "final" / "clients").iterdir())
    assert exported == sorted(whole.summary["data"]["clients"])

    # what `fedllm eval` and `export` load: each client's own parts from the checkpoint
    ws = prepare(tiny_config(*overrides))
    split = PersonalSplit.from_config(ws.config.personal)
    trained = load_trained(RunDir(whole.run_dir), ws.initial, split)
    initial_own = split.split(ws.initial)[1]
    trained_clients = 0
    for cid in whole.summary["data"]["clients"]:
        own = split.split(trained.state_of(cid))[1]
        path = whole.run_dir / "clients" / "personal" / f"{cid}.safetensors"
        if not path.exists():  # never sampled: its own parts are still the initial ones
            assert all(torch.equal(own[k], initial_own[k]) for k in own)
            continue
        kept = load_file(path)
        assert own.keys() == kept.keys() and all(torch.equal(own[k], kept[k]) for k in own)
        assert any(not torch.equal(own[k], initial_own[k]) for k in own), "trained, not initial"
        trained_clients += 1
    assert trained_clients >= 2

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)


def test_personal_parts_need_a_federation(tmp_path: Path) -> None:
    ws = prepare(tiny_config(*PERSONAL, 'federation.mode="local"'))
    with pytest.raises(ModeError, match="federation.mode = 'federated'"):
        build_mode(ws, tmp_path)


def test_personal_prompt_tokens_stay_home(tmp_path: Path) -> None:
    cfg = tiny_config(
        'method.kind="prompt"', "method.num_virtual_tokens=6", "personal.prompt_tokens=2"
    )
    result = run(cfg, tmp_path / "p")
    (name,) = [
        k for k in load_file(result.run_dir / "checkpoints" / "round-00002" / "global.safetensors")
    ]
    shared = load_file(result.run_dir / "checkpoints" / "round-00002" / "global.safetensors")[name]
    assert shared.shape[0] == 4, "only the first 4 virtual tokens are shared"
    trained = sorted((result.run_dir / "clients" / "personal").glob("*.safetensors"))
    assert trained
    for path in trained:
        (own,) = load_file(path).values()
        assert own.shape[0] == 2
    final = result.records[-1]["eval"]
    assert "global_only/clients_ppl_mean" in final
