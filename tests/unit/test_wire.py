"""Bytes are counted exactly as they would be sent."""

import random

import torch

from fedllm.wire import decode, encode, payload_bytes

DTYPES = [
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.int64,
    torch.int8,
    torch.bool,
    torch.float64,
]


def test_payload_bytes_equals_encoded_length_on_random_layouts() -> None:
    rng = random.Random(0)
    for _ in range(300):
        params = {
            f"layer.{rng.randint(0, 99)}.w{i}": torch.zeros(
                [rng.randint(0, 9) for _ in range(rng.randint(0, 3))], dtype=rng.choice(DTYPES)
            )
            for i in range(rng.randint(0, 6))
        }
        assert payload_bytes(params) == len(encode(params))


def test_round_trip_is_exact() -> None:
    params = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16)}
    back = decode(encode(params))
    assert set(back) == set(params)
    for name in params:
        assert torch.equal(back[name], params[name])
