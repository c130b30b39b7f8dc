"""What a client's reply may say about its training, and what the run may keep of it.

A reply's metrics are statistics of the client's data: its training loss, token
counts, its update's norm, whether the clip scaled it, the share of its examples
DP-SGD clipped. Under a privacy mechanism they are a side channel around it, so the
strictest mechanism of the run decides (:data:`Disclosure`):

- ``all``: no privacy mechanism; everything travels and lands in ``metrics.jsonl``.
- ``server``: central DP trusts the server with each update, and adaptive clipping
  needs each client's clipped bit to compute its noisy count; the statistics travel
  but the run writes none of them out: what leaves the server is the noisy model and
  the accounted epsilon.
- ``public``: secure aggregation, homomorphic encryption and local DP do not trust the
  server; only :data:`PUBLIC_METRICS` and the metrics a plug-in declares public (a
  function of the config and the step count, like DP-SGD's own epsilon) leave the
  client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

Disclosure = Literal["all", "server", "public"]

STRICTNESS: dict[Disclosure, int] = {"all": 0, "server": 1, "public": 2}

PUBLIC_METRICS = frozenset({"steps", "lr_sum", "train_s"})
"""Trainer metrics that are no function of the data's content: the optimizer steps and
the learning-rate sum (both set by the config and the client's size, which the server
plans with), and the seconds trained (what the server sees of the reply's arrival)."""


def strictest(disclosures: Iterable[Disclosure]) -> Disclosure:
    """The most restrictive of ``disclosures`` (``all`` when there are none)."""
    return max(disclosures, key=STRICTNESS.__getitem__, default="all")


def disclosed(
    metrics: Mapping[str, float], disclosure: Disclosure, public: frozenset[str] = frozenset()
) -> dict[str, float]:
    """The metrics a reply carries under ``disclosure``: all of them, or under
    ``public`` only :data:`PUBLIC_METRICS` and ``public``."""
    if disclosure != "public":
        return dict(metrics)
    allowed = PUBLIC_METRICS | public
    return {key: value for key, value in metrics.items() if key in allowed}


def kept(
    metrics: Mapping[str, float], disclosure: Disclosure, public: frozenset[str] = frozenset()
) -> dict[str, float]:
    """What the run may write out of a reply's metrics: all of them with no privacy
    mechanism, else only :data:`PUBLIC_METRICS` and ``public``."""
    if disclosure == "all":
        return dict(metrics)
    return disclosed(metrics, "public", public)
