"""Robust aggregators, one file per rule, each registered by name in
``fedllm.components.AGGREGATORS`` (``server.aggregator = "krum"``) with its settings in
``[aggregator.<name>]``.

Every rule works on each client's flattened full update (all its tensors concatenated
in the broadcast's order, :mod:`fedllm.security.defenses.flat`); Krum, Multi-Krum and
Bulyan can measure their distances on LoRA's per-layer product ``B A`` instead
(:mod:`fedllm.security.defenses.product`).

FLTrust, FoolsGold, FLAME and centered clipping need more than a round's updates (the
server's root update, client histories across rounds, the round's seed, the previous
round's result): each is a
:class:`~fedllm.security.defenses.round_rule.RoundRule`, fed by an algorithm of its
name that choosing it turns on (:mod:`fedllm.security.defenses.round_rule`).
"""
