"""The message parts of SecAgg+ that its client and server halves share: phase names,
config keys, array names."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedllm.message import ConfigValue

ADVERTISE = "secagg/advertise"
SHARE = "secagg/share"
MASKED = "secagg/masked"
UNMASK = "secagg/unmask"
PHASES = (ADVERTISE, SHARE, MASKED, UNMASK)
"""The protocol's phases, in order (engine phase names)."""

COHORT = "secagg.cohort"
PUBLIC = "secagg.public"
SIGNATURE = "secagg.signature"
KEYS = "secagg.keys"
SHARES = "secagg.shares"
SURVIVORS = "secagg.survivors"
DROPPED = "secagg.dropped"
REVEALED = "secagg.revealed"
REFUSED = "secagg.refused"
"""Config keys of the phases' payloads (bytes) and of a refusal (its reason)."""
MASKED_INPUT = "secagg/masked"
"""The array of a masked-input reply (int32 or int64, the flattened update's length)."""

NoiseStd = Callable[[Mapping[str, ConfigValue]], float]
"""The std of the distributed DP noise a client adds, from the broadcast's config."""
