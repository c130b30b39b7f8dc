"""Aggregation against memory bandwidth: the streaming weighted mean and the coverage mean
of 10 updates of 10M fp32 values, vs this machine's read bandwidth measured in the same run.

Figures, each the median of several repetitions after a warm-up:
- read bandwidth: ``torch.sum`` over a buffer far larger than the caches (bytes read / s);
- copy bandwidth: ``dst.copy_(src)`` of the same size (bytes copied / s);
- the weighted mean (``aggregate/mean.py``) of ``--updates`` updates of ``--numel`` values,
  with its accumulators reused across rounds as the server reuses them: ``start``, one
  ``add`` per update, ``result``; its rate is the bytes of updates folded in per second.
  As fedllm runs it (updates held up to ``HOLD_BYTES`` and folded in together, block by
  block, so the sums stay in cache) and folding each update as it arrives (``hold_bytes
  = 0``: the sums are read and written from memory once per update);
- the coverage mean (``algorithms/hetero_rank/coverage.py``) of the same updates,
  every tensor with a per-row 0/1 mask (how heterogeneous LoRA ranks use it), same two
  ways.
Each also without its result (``fold``: start, the adds, the sums read back). The
result is the sums scaled in place (no new tensor: fresh memory is first touched at a
few GB/s here, which made a freshly allocated result half the round).
Target: each mean at least 50% of the read bandwidth.

Usage: python -m benchmarks.aggregate [--numel 10000000] [--updates 10] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import write_result
from fedllm.aggregate.mean import BLOCK, HOLD_BYTES, WeightedMean
from fedllm.algorithms.hetero_rank.coverage import CoverageMean
from fedllm.types import Params

TARGET = 0.5
"""Least share of the read bandwidth each mean must reach."""

ROWS = 1000
"""Rows of each update tensor (the coverage masks are one value per row)."""


def timed(work: Callable[[], object], reps: int) -> float:
    """Median seconds of ``work()`` over ``reps`` runs, after one warm-up run."""
    work()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(numel: int, reps: int) -> float:
    """Bytes per second ``torch.sum`` reads from a buffer of ``numel`` fp32 values."""
    buffer = torch.ones(numel)
    return buffer.numel() * 4 / timed(lambda: float(buffer.sum()), reps)


def copy_bandwidth(numel: int, reps: int) -> float:
    """Bytes per second ``copy_`` moves between two buffers of ``numel`` fp32 values."""
    source, target = torch.ones(numel), torch.zeros(numel)
    return source.numel() * 4 / timed(lambda: target.copy_(source), reps)


def updates(count: int, numel: int, seed: int = 0) -> list[Params]:
    """``count`` updates of one ``[ROWS, numel / ROWS]`` fp32 tensor each, already in
    memory (as decoded replies are)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (ROWS, numel // ROWS)
    return [{"w": torch.randn(shape, generator=generator)} for _ in range(count)]


def mean_round(mean: WeightedMean, batch: list[Params]) -> Params:
    """One round of the streaming mean: start, fold every update in, result."""
    mean.start(batch[0])
    for k, update in enumerate(batch):
        mean.add(update, float(k + 1))
    return mean.result()


def fold_round(mean: WeightedMean, batch: list[Params]) -> Params:
    """A round without its result: start, fold every update in, read the sums."""
    mean.start(batch[0])
    for k, update in enumerate(batch):
        mean.add(update, float(k + 1))
    return mean._sums.sums


def coverage_round(mean: CoverageMean, batch: list[Params], masks: list[Params]) -> Params:
    """One round of the coverage mean, every update with its row mask."""
    mean.start(batch[0])
    for k, (update, mask) in enumerate(zip(batch, masks, strict=True)):
        mean.add_covered(update, float(k + 1), mask)
    return mean.result()


def row_masks(count: int, rows: int) -> list[Params]:
    """Update ``k`` covers its first ``rows * (k + 1) / count`` rows (ranks 1..count)."""
    masks = []
    for k in range(count):
        mask = torch.zeros(rows, 1)
        mask[: rows * (k + 1) // count] = 1.0
        masks.append({"w": mask})
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    numel = args.numel - args.numel % ROWS
    read = read_bandwidth(numel * args.updates, args.reps)
    copy = copy_bandwidth(numel * args.updates, args.reps)
    batch = updates(args.updates, numel)
    masks = row_masks(args.updates, ROWS)
    update_bytes = args.updates * numel * 4
    mean, coverage = WeightedMean(), CoverageMean()
    mean_s = timed(lambda: mean_round(mean, batch), args.reps)
    coverage_s = timed(lambda: coverage_round(coverage, batch, masks), args.reps)
    fold_s = timed(lambda: fold_round(mean, batch), args.reps)
    streaming, streaming_coverage = WeightedMean(), CoverageMean()
    streaming._sums.hold_bytes = streaming_coverage._sums.hold_bytes = 0
    streaming_s = timed(lambda: mean_round(streaming, batch), args.reps)
    streaming_coverage_s = timed(
        lambda: coverage_round(streaming_coverage, batch, masks), args.reps
    )
    shares = {
        "mean": update_bytes / mean_s / read,
        "coverage_mean": update_bytes / coverage_s / read,
    }
    streaming_fold_s = timed(lambda: fold_round(streaming, batch), args.reps)
    folds = {
        "held": update_bytes / fold_s / read,
        "one_at_a_time": update_bytes / streaming_fold_s / read,
    }
    one_at_a_time = {
        "mean": update_bytes / streaming_s / read,
        "coverage_mean": update_bytes / streaming_coverage_s / read,
    }
    write_result(
        "aggregate",
        {
            "updates": args.updates,
            "numel": numel,
            "torch_threads": torch.get_num_threads(),
            "read_gb_s": read / 1e9,
            "copy_gb_s": copy / 1e9,
            "mean_round_s": mean_s,
            "mean_gb_s": update_bytes / mean_s / 1e9,
            "coverage_round_s": coverage_s,
            "coverage_gb_s": update_bytes / coverage_s / 1e9,
            "share_of_read_bandwidth": shares,
            "hold_bytes": HOLD_BYTES,
            "block": BLOCK,
            "fold_round_s": {"held": fold_s, "one_at_a_time": streaming_fold_s},
            "fold_share_of_read_bandwidth": folds,
            "one_at_a_time_round_s": {"mean": streaming_s, "coverage_mean": streaming_coverage_s},
            "one_at_a_time_share_of_read_bandwidth": one_at_a_time,
            "target_share": TARGET,
            "meets_target": all(share >= TARGET for share in shares.values()),
        },
    )


if __name__ == "__main__":
    main()
