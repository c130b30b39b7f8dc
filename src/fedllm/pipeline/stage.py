"""The aggregation pipeline: client-side stages, an aggregator, server-side stages.

An update flows through each stage's client half in order (clip -> noise ->
compress -> mask), is combined by the aggregator, then flows back through the
server halves in reverse order. Each stage has its own state and declares
what it needs; :class:`Pipeline` refuses a bad combination when it is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from fedllm.message import ConfigValue
from fedllm.types import ClientId, ClientUpdate, Params

StageState = dict[str, float]
"""A stage's own state between rounds: named scalars (e.g. an adaptive clip norm)."""


class PipelineError(ValueError):
    """A combination of stages and aggregator that cannot work together."""


@dataclass(frozen=True)
class Requirements:
    """What a stage needs from the rest of the pipeline.

    Attributes:
        needs_clip_before: a bounding stage must precede it (e.g. DP noise).
        linear_aggregator_only: the aggregator must be a (weighted) sum or mean
            (e.g. secure summation, which only reveals the sum).
        bounds_norm: this stage bounds each update's norm (a clip).
    """

    needs_clip_before: bool = False
    linear_aggregator_only: bool = False
    bounds_norm: bool = False


@dataclass
class RoundReport:
    """The round a stage's server half acts in (and learns from, to update its state).

    Attributes:
        round: the round.
        num_accepted: updates folded into the aggregate.
        client_metrics: the accepted clients' metrics (their stages' reports among them).
        total_weight: the accepted updates' total aggregation weight.
        seed: a seed derived for this round (noise, masks).
    """

    round: int
    num_accepted: int
    client_metrics: list[dict[str, float]] = field(default_factory=list)
    total_weight: float = 0.0
    seed: int = 0


class Parameter(Protocol):
    """A stage parameter: a constant, or an estimator that moves between rounds
    (adaptive clipping to a quantile of the update norms)."""

    def initial(self) -> float:
        """The value before the first round."""
        ...

    def next(self, value: float, report: RoundReport) -> float:
        """The value for the round after ``report``'s."""
        ...


@dataclass(frozen=True)
class Constant:
    """A parameter that never moves."""

    value: float

    def initial(self) -> float:
        return self.value

    def next(self, value: float, report: RoundReport) -> float:
        return self.value


class Stage(Protocol):
    """One step of the pipeline, with a client half and a server half."""

    name: str

    def requires(self) -> Requirements:
        """The stage's needs, checked when the pipeline is built."""
        ...

    def initial_state(self) -> StageState:
        """State before the first round."""
        ...

    def client(self, update: Params, state: StageState) -> tuple[Params, dict[str, float]]:
        """Transform one client's update; also return metrics to report."""
        ...

    def server(self, combined: Params, state: StageState, report: RoundReport) -> Params:
        """Transform the combined update, in the round ``report`` describes."""
        ...

    def next_state(self, state: StageState, report: RoundReport) -> StageState:
        """State for the next round."""
        ...


class Aggregator(Protocol):
    """Combines weighted updates into one, streaming (one update at a time)."""

    name: str
    linear: bool

    def start(self, template: Params) -> None:
        """Prepare for a round whose updates have ``template``'s keys and shapes."""
        ...

    def add(self, update: Params, weight: float) -> None:
        """Fold in one update with a non-negative weight."""
        ...

    def result(self) -> Params:
        """The combined update (valid until the next :meth:`start`)."""
        ...


@dataclass(frozen=True)
class WeightedUpdate:
    """One accepted update as a batch aggregator sees it."""

    client_id: ClientId
    delta: Params
    weight: float


@dataclass
class BatchResult:
    """What a batch aggregator made of a round.

    Attributes:
        combined: the aggregate (same keys, shapes and dtypes as the reference).
        excluded: the clients whose updates it left out (recorded in the round).
    """

    combined: Params
    excluded: list[ClientId] = field(default_factory=list)


@runtime_checkable
class BatchAggregator(Protocol):
    """Combines every accepted update of a round at once (robust rules: median, Krum,
    trimmed mean need them all). Memory holds one update per accepted client."""

    name: str
    linear: bool

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        """The aggregate of ``updates`` (deltas against ``reference``, the broadcast)."""
        ...


@runtime_checkable
class CoverageAggregator(Aggregator, Protocol):
    """An aggregator that can also take updates holding only part of the state.

    Clients that train part of the state (heterogeneous LoRA ranks) send
    zeros elsewhere; to average each entry over the clients that hold it, the
    aggregator must know which entries those are. Only such aggregators get a
    coverage; every other keeps the two-argument :meth:`Aggregator.add`.
    """

    def add_covered(self, update: Params, weight: float, coverage: Params) -> None:
        """Fold in an update that holds only the entries where ``coverage`` is 1
        (0/1 masks by tensor name, broadcastable; a tensor without one: all)."""
        ...


class Pipeline:
    """Stages around an aggregator, checked for compatibility at construction.

    Args:
        stages: applied in order on the client, in reverse on the server.
        aggregator: combines the client-transformed updates, streaming (one at a
            time) or as a batch (all of a round's accepted updates at once).
    """

    def __init__(self, stages: Sequence[Stage], aggregator: Aggregator | BatchAggregator) -> None:
        self.stages = list(stages)
        self.aggregator = aggregator
        self.states: dict[str, StageState] = {s.name: s.initial_state() for s in self.stages}
        self.excluded: list[ClientId] = []
        self._batch: list[WeightedUpdate] = []
        self._reference: Params = {}
        check_composition(self.stages, aggregator)

    def broadcast_config(self) -> dict[str, ConfigValue]:
        """The stages' states as broadcast config (``<stage>/<key>``): what a client's
        halves act with this round (an adaptive clip norm changes every round)."""
        return {
            f"{name}/{key}": value
            for name, state in self.states.items()
            for key, value in state.items()
        }

    def client(self, update: ClientUpdate, config: Mapping[str, ConfigValue]) -> ClientUpdate:
        """Run the client halves over one update (this runs on the client), with each
        stage's state read from the broadcast's ``config``."""
        delta = update.delta
        metrics = dict(update.metrics)
        for stage in self.stages:
            delta, stage_metrics = stage.client(delta, stage_state(stage, config))
            metrics.update({f"{stage.name}/{k}": v for k, v in stage_metrics.items()})
        return replace(update, delta=delta, metrics=metrics)

    def start(self, template: Params) -> None:
        """Begin a round whose updates have ``template``'s keys, shapes and dtypes."""
        self.excluded, self._batch, self._reference = [], [], template
        if not isinstance(self.aggregator, BatchAggregator):
            self.aggregator.start(template)

    def add(self, update: ClientUpdate, weight: float, coverage: Params | None = None) -> None:
        """Fold in one client-transformed update (streaming: it can be dropped after).

        ``coverage``: the entries the update holds (see :class:`CoverageAggregator`);
        None: all of them.

        Raises:
            PipelineError: a coverage for an aggregator that cannot take one.
        """
        if isinstance(self.aggregator, BatchAggregator):
            if coverage is not None:
                raise PipelineError(
                    f"batch aggregator {self.aggregator.name!r} takes whole updates only"
                )
            self._batch.append(WeightedUpdate(update.client_id, update.delta, weight))
        elif coverage is None:
            self.aggregator.add(update.delta, weight)
        elif isinstance(self.aggregator, CoverageAggregator):
            self.aggregator.add_covered(update.delta, weight, coverage)
        else:
            raise PipelineError(
                f"aggregator {self.aggregator.name!r} takes whole updates only, but this "
                "update covers part of the state; use an aggregator that takes coverage "
                "(e.g. CoverageMean)"
            )

    def finish(self, report: RoundReport | None = None) -> Params:
        """The aggregate, passed back through the server halves in reverse order
        (a batch aggregator's excluded clients are kept in :attr:`excluded`); ``report``
        describes the round to the server halves (None: round 0, nothing known)."""
        context = report if report is not None else RoundReport(0, 0)
        if isinstance(self.aggregator, BatchAggregator):
            result = self.aggregator.aggregate(self._batch, self._reference)
            self._batch = []
            self.excluded = list(result.excluded)
            combined = result.combined
        else:
            combined = self.aggregator.result()
        for stage in reversed(self.stages):
            combined = stage.server(combined, self.states[stage.name], context)
        return combined

    def combine(self, updates: Sequence[ClientUpdate], weights: Sequence[float]) -> Params:
        """:meth:`start`, :meth:`add` each update, :meth:`finish`."""
        if not updates:
            raise ValueError("combine() needs at least one update")
        self.start(updates[0].delta)
        for update, weight in zip(updates, weights, strict=True):
            self.add(update, weight)
        return self.finish()

    def end_round(self, report: RoundReport) -> None:
        """Advance every stage's state."""
        for stage in self.stages:
            self.states[stage.name] = stage.next_state(self.states[stage.name], report)

    def estimates(self) -> dict[str, float]:
        """The stage parameters an estimator has moved from their start, as
        ``stage.key`` -> value (adaptive clipping's norm); empty when all are constant."""
        return {
            f"{stage.name}.{key}": float(value)
            for stage in self.stages
            for key, value in self.states[stage.name].items()
            if isinstance(value, int | float) and value != stage.initial_state().get(key)
        }


def stage_state(stage: Stage, config: Mapping[str, ConfigValue]) -> StageState:
    """A stage's state as the broadcast carries it.

    Raises:
        PipelineError: the broadcast lacks one of the stage's keys, or it isn't a number.
    """
    prefix = f"{stage.name}/"
    state: StageState = {}
    for key in stage.initial_state():
        value = config.get(prefix + key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PipelineError(
                f"the broadcast lacks stage {stage.name!r}'s {key!r} (got {value!r}); "
                "client and server pipelines differ"
            )
        state[key] = float(value)
    return state


def check_composition(stages: Sequence[Stage], aggregator: Aggregator | BatchAggregator) -> None:
    """Refuse stage orders and aggregators that cannot work together."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PipelineError(f"pipeline stages must be unique, got {names}")
    clipped = False
    for stage in stages:
        needs = stage.requires()
        if needs.needs_clip_before and not clipped:
            raise PipelineError(
                f"stage {stage.name!r} needs a clipping stage before it "
                "(its guarantee depends on bounded updates); add 'clip' earlier"
            )
        if needs.linear_aggregator_only and not aggregator.linear:
            raise PipelineError(
                f"stage {stage.name!r} only works with a linear aggregator (mean/sum), "
                f"but the aggregator is {aggregator.name!r}; robust aggregation needs "
                "individual updates, which this stage hides"
            )
        clipped = clipped or needs.bounds_norm
