"""The cost of secure aggregation per client and on the server, beside the plain protocol
and CKKS in the same run: SecAgg+ (fedllm.secure) for 10, 50 and 100 clients and 1M /
10M-entry updates; the plain protocol (a float32 update up, a streaming mean on the
server) for the same; CKKS (TenSEAL) for the smallest grid point.

Per point, one whole SecAgg+ round among in-process clients
(:func:`fedllm.secure.secagg.simulate.simulate_round`, the state machines the round protocol
runs), default degree 2 ceil(log2 n) and threshold floor(2k/3) + 1, a 31-bit ring:
- client seconds (median over clients): key generation, Shamir sharing and sealing,
  quantisation, the masks (one self mask and k pairwise PRG expansions), revealing;
- server seconds: routing, the masked sum, every survivor's self mask reconstructed and
  removed, and with dropouts the dropped clients' pairwise masks;
- payload bytes up and down per client (median), and their ratio to a float32 update;
- the same with 10% of the clients dropping after sharing keys (recovery cost).
Ratios against the plain protocol measured in the same run; no threshold is asserted:
these are figures for docs/privacy.md.

Usage: python -m benchmarks.secagg_cost [--clients 10 50 100] [--sizes 1000000 10000000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from benchmarks.common import write_result
from fedllm.aggregate.mean import WeightedMean
from fedllm.secure.secagg.graph import default_degree
from fedllm.secure.secagg.params import RoundParams, default_threshold
from fedllm.secure.secagg.ring import RingSpec, quantise
from fedllm.secure.secagg.simulate import simulate_round

BITS = 31
CLIP = 0.05


class LazyInputs(Mapping[str, np.ndarray]):
    """Each client's quantised update, made when asked (one in memory at a time)."""

    def __init__(self, n: int, size: int, spec: RingSpec) -> None:
        self.ids = [f"client-{i:03d}" for i in range(n)]
        self.size, self.spec = size, spec

    def __getitem__(self, cid: str) -> np.ndarray:
        rng = np.random.default_rng(self.ids.index(cid))
        return rng.integers(0, self.spec.levels, self.size, dtype=np.int64)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def quantise_seconds(size: int, spec: RingSpec) -> float:
    """One client's quantisation of a float update of ``size`` entries."""
    x = np.random.default_rng(0).normal(0, CLIP / 3, size)
    start = time.perf_counter()
    quantise(x, spec, np.random.default_rng(1))
    return time.perf_counter() - start


def plain_round(n: int, size: int) -> dict[str, float]:
    """The plain protocol: each client's float32 update (its bytes), the server's
    streaming weighted mean of ``n`` of them (seconds)."""
    update = {"w": torch.randn(size)}
    mean = WeightedMean()
    start = time.perf_counter()
    mean.start(update)
    for _ in range(n):
        mean.add(update, 1.0)
    mean.result()
    return {"server_s": time.perf_counter() - start, "bytes_up": 4.0 * size}


def secagg_point(n: int, size: int, drop_share: float) -> dict[str, Any]:
    spec = RingSpec(BITS, CLIP, n)
    degree = default_degree(n)
    params = RoundParams(spec, default_threshold(degree), 1)
    inputs = LazyInputs(n, size, spec)
    # spread out (every 1/share-th client), so no neighbourhood loses more than it can
    every = max(1, round(1 / drop_share)) if drop_share > 0 else len(inputs.ids) + 1
    dropped = set(inputs.ids[::every][: int(n * drop_share)])
    start = time.perf_counter()
    outcome = simulate_round(inputs, params, degree, 0, {"masked": dropped} if dropped else None)
    wall = time.perf_counter() - start
    assert outcome.abort is None, outcome.abort
    cost = outcome.cost
    answering = [c for c in inputs.ids if c not in dropped]
    return {
        "degree": degree,
        "threshold": params.threshold,
        "dropped": len(dropped),
        "client_s": statistics.median(cost.client_s[c] for c in answering),
        "server_s": cost.server_s,
        "bytes_up": statistics.median(cost.bytes_up[c] for c in answering),
        "bytes_down": statistics.median(cost.bytes_down[c] for c in answering),
        "round_wall_s": wall,
    }


def ckks_point(n: int, size: int) -> dict[str, Any] | None:
    """CKKS additive aggregation of ``n`` updates (encrypt each, add on the server,
    decrypt once), or None without the ``he`` extra."""
    try:
        from fedllm.secure.he import ckks as he

        keys = he.make_keys()
    except ImportError:
        return None
    except he.HEUnavailable:
        return None
    x = np.random.default_rng(0).normal(0, CLIP / 3, size)
    cost = he.HECost()
    chunks = he.encrypt_vector(x, keys.public_context, cost=cost)
    total = he.EncryptedSum(keys.public_context)
    start = time.perf_counter()
    for _ in range(n):
        total.add(chunks)
    server_s = time.perf_counter() - start
    decrypt = he.HECost()
    he.decrypt_vector(total.result(), size, keys.secret_context, cost=decrypt)
    return {
        "client_s": cost.encrypt_seconds + decrypt.decrypt_seconds,
        "encrypt_s": cost.encrypt_seconds,
        "decrypt_s": decrypt.decrypt_seconds,
        "server_s": server_s,
        "bytes_up": cost.bytes_up,
        "bytes_up_ratio": cost.bytes_up / (4.0 * size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--drop-share", type=float, default=0.1)
    args = parser.parse_args()
    points = []
    for size in args.sizes:
        for n in args.clients:
            plain = plain_round(n, size)
            point: dict[str, Any] = {"clients": n, "entries": size, "plain": plain}
            q = quantise_seconds(size, RingSpec(BITS, CLIP, n))
            for label, share in (("secagg", 0.0), ("secagg_dropouts", args.drop_share)):
                figures = secagg_point(n, size, share)
                figures["client_s"] += q
                figures["quantise_s"] = q
                figures["bytes_up_ratio"] = figures["bytes_up"] / plain["bytes_up"]
                figures["server_vs_plain"] = figures["server_s"] / plain["server_s"]
                point[label] = figures
                print(label, n, size, {k: round(v, 3) for k, v in figures.items()}, flush=True)
            points.append(point)
    smallest = min(args.sizes)
    ckks = ckks_point(min(args.clients), smallest)
    write_result(
        "secagg_cost",
        {
            "bits": BITS,
            "clip_range": CLIP,
            "points": points,
            "ckks": None
            if ckks is None
            else {"clients": min(args.clients), "entries": smallest, **ckks},
        },
    )


if __name__ == "__main__":
    main()
