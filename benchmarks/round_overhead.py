"""Round overhead: the simulator's round vs a plain PyTorch loop doing the same steps.

Both run K local steps of the same model on the same client's batches, in the
same process, alternating, several repetitions. The simulator's time is a
whole federated round (broadcast, local training, validation, byte counting,
aggregation, server step); evaluation and checkpoints are left out of both.
Target: simulator / plain <= 1.05.

Usage: python -m benchmarks.round_overhead [--model smollm2-135m|tiny] [--steps 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import FP32, write_result
from fedllm.client.train import batch_indices
from fedllm.config import load_config
from fedllm.data import collate
from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.state import set_trainable_state
from fedllm.seeding import derive_seed

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(ws: Workspace, client_id: str, steps: int, round_num: int) -> float:
    """The reference: an ordinary torch training loop over the same batches (seconds)."""
    cfg = ws.config.client
    assert ws.data is not None
    examples = ws.data.clients[client_id].train
    seed = derive_seed(ws.config.seed, "client", round_num, client_id)
    order = batch_indices(len(examples), cfg.batch_size, torch.Generator().manual_seed(seed))
    batches = [collate([examples[i] for i in next(order)], ws.pad_id) for _ in range(steps)]
    start = time.perf_counter()
    set_trainable_state(ws.model, ws.initial)
    params = [p for p in ws.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    ws.model.train()
    for batch in batches:
        loss = ws.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    config = load_config(
        ROOT / "configs" / "demo.toml",
        [
            f'model.name="{args.model}"',
            f"client.local_steps={args.steps}",
            "server.clients_per_round=1",
            "data.num_clients=2",
            *FP32,  # the plain loop is fp32: so is the round it is compared with
        ],
    )
    ws = prepare(config)
    with tempfile.TemporaryDirectory() as tmp:
        mode = build_mode(ws, Path(tmp))
        assert isinstance(mode, FederatedMode)
        plain_loop(ws, next(iter(mode.clients)), 2, 0)  # warm-up (allocator, kernels)
        simulator, plain = [], []
        for rep in range(1, args.reps + 1):
            start = time.perf_counter()
            record = mode.play_round(rep, None)
            simulator.append(time.perf_counter() - start)
            plain.append(plain_loop(ws, record.sampled[0], args.steps, rep))
    ratio = statistics.median(simulator) / statistics.median(plain)
    write_result(
        f"round_overhead_{args.model}",
        {
            "model": args.model,
            "method": config.method.kind,
            "local_steps": args.steps,
            "batch": [config.client.batch_size, config.data.seq_len],
            "simulator_round_s": simulator,
            "plain_loop_s": plain,
            "ratio_median": ratio,
            "target_ratio": 1.05,
            "meets_target": ratio <= 1.05,
        },
    )


if __name__ == "__main__":
    main()
