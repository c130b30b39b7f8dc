"""The golden check's two modes: bit for bit, and portable across CPUs.

Portable: structure, strings, integers, tensor dtypes and shapes exact; floats within
1e-5 relative; tensor digests not compared; the byte counts a case names as carrying
float text within 5%. Exact: everything, digests included.
"""

from __future__ import annotations

from tests.golden.make_golden import Comparison, differences

PORTABLE = Comparison(exact=False)
EXACT = Comparison(exact=True)
DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


def _case(loss: float, steps: int = 3, tensor: str = f"torch.float32[4, 8]:{DIGEST_A}") -> dict:
    return {
        "records": [{"round": 1, "train_loss": loss, "steps": steps, "bytes_up": 928}],
        "tensors": {"final": {"adapter.safetensors:lora_A": tensor}},
    }


def test_another_cpus_float_drift_passes_portably_only() -> None:
    expected, moved = _case(2.3456789), _case(2.3456789 * (1 + 2e-7))
    assert differences(expected, moved, "", PORTABLE) == []
    assert differences(expected, moved, "", EXACT) == [
        f"records[0].train_loss: expected 2.3456789, got {2.3456789 * (1 + 2e-7)!r}"
    ]
    too_far = _case(2.3456789 * (1 + 1e-4))
    assert len(differences(expected, too_far, "", PORTABLE)) == 1


def test_integers_structure_and_shapes_stay_exact_in_the_portable_mode() -> None:
    expected = _case(1.0)
    assert differences(expected, _case(1.0, steps=4), "", PORTABLE) == [
        "records[0].steps: expected 3, got 4"
    ]
    reshaped = _case(1.0, tensor=f"torch.float32[8, 4]:{DIGEST_A}")
    assert len(differences(expected, reshaped, "", PORTABLE)) == 1
    recast = _case(1.0, tensor=f"torch.bfloat16[4, 8]:{DIGEST_A}")
    assert len(differences(expected, recast, "", PORTABLE)) == 1
    other_digest = _case(1.0, tensor=f"torch.float32[4, 8]:{DIGEST_B}")
    assert differences(expected, other_digest, "", PORTABLE) == []
    assert len(differences(expected, other_digest, "", EXACT)) == 1
    fewer = {**expected, "records": []}
    assert differences(expected, fewer, "", PORTABLE)  # a record less
    assert differences(expected, {"records": expected["records"]}, "", PORTABLE) == [
        f"tensors: missing (expected {expected['tensors']!r:.80})"
    ]


def test_byte_counts_of_float_text_move_only_where_named() -> None:
    expected, moved = _case(1.0), _case(1.0)
    moved["records"][0]["bytes_up"] = 932
    assert differences(expected, moved, "", PORTABLE) == [
        "records[0].bytes_up: expected 928, got 932"
    ]
    named = Comparison(exact=False, float_text=frozenset({"bytes_up"}))
    assert differences(expected, moved, "", named) == []
    moved["records"][0]["bytes_up"] = 1000  # over 5%
    assert differences(expected, moved, "", named) == [
        "records[0].bytes_up: expected 928, got 1000 bytes (floats as text)"
    ]
    exact_named = Comparison(exact=True, float_text=frozenset({"bytes_up"}))
    moved["records"][0]["bytes_up"] = 932
    assert len(differences(expected, moved, "", exact_named)) == 1
