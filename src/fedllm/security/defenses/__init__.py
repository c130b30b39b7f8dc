"""Robust aggregators, one file per rule, each registered by name in
``fedllm.components.AGGREGATORS`` (``server.aggregator = "krum"``) with its settings in
``[aggregator.<name>]``.

Every rule works on each client's flattened full update (all its tensors concatenated
in the broadcast's order, :mod:`fedllm.security.defenses.flat`); Krum, Multi-Krum and
Bulyan can measure their distances on LoRA's per-layer product ``B A`` instead
(:mod:`fedllm.security.defenses.product`).
"""
