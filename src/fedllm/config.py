"""The run configuration: a typed schema, TOML loading and ``--set`` overrides.

Unknown keys, wrong types and unknown component names fail at load with the
key, the bad value and what would be valid.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomllib
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from fedllm.algorithms.personal import PersonalConfig
from fedllm.client.settings import ClientConfig
from fedllm.data.settings import DataConfig, PublicConfig
from fedllm.model.settings import MethodConfig, ModelConfig
from fedllm.pipeline.settings import PipelineConfig
from fedllm.privacy.settings import PrivacyConfig
from fedllm.registry import Registry
from fedllm.secure.he.settings import HEConfig
from fedllm.secure.secagg.settings import SecAggConfig
from fedllm.security.attacks.settings import AttackConfig
from fedllm.server.settings import ServerConfig
from fedllm.settings import NONE, ConfigError, Section, check_client_names

__all__ = [  # the sections live with their components; importable from here too
    "NONE",
    "ClientConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FederationConfig",
    "HardPromptConfig",
    "MethodConfig",
    "ModelConfig",
    "PersonalConfig",
    "PipelineConfig",
    "PrivacyConfig",
    "PublicConfig",
    "RunConfig",
    "RuntimeConfig",
    "Section",
    "ServerConfig",
    "apply_override",
    "check_client_names",
    "dump_config",
    "load_config",
    "parse_config",
]


class FederationConfig(Section):
    mode: Literal["federated", "local", "centralized"] = Field(
        "federated",
        description="'federated'; 'local': every client trains alone on its own data; "
        "'centralized': all training data pooled. Same step budget in all three.",
    )
    algorithms: list[str] = Field(
        default_factory=list,
        description="Registered opt-in algorithms to turn on by name (ones with no config "
        "section of their own, e.g. a plug-in a user registers); built-in ones are turned on "
        "by their own settings.",
    )


class EvalConfig(Section):
    every: int = Field(1, ge=1, description="Evaluate every N rounds (and at round 0).")
    batch_size: int = Field(8, ge=1, description="Evaluation batch size.")
    clients: int | None = Field(
        None,
        ge=1,
        description="Clients scored at each evaluation: a seeded sample of this many, the "
        "same every round (each one's loss is recorded, 'eval_clients' counts them); none: "
        "every client. A cross-device federation of thousands would otherwise score them all.",
    )


class RunConfig(Section):
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every N rounds.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu",
        description="Where clients train and the model is evaluated: 'cpu', 'cuda' (an error "
        "without a GPU) or 'auto' (cuda when torch sees a GPU, else cpu). The exchanged "
        "state, the server and checkpoints stay in CPU memory.",
    )
    randomness: Literal["auto", "reproducible", "secure"] = Field(
        "auto",
        description="Where the draws a privacy guarantee rests on come from (DP noise, DP-SGD "
        "lots, cohorts, secure-aggregation keys and noise): 'reproducible' (derived from seed: "
        "a rerun gives the same numbers, and anyone who knows the config can recompute and "
        "subtract the noise: experiments only), 'secure' (the OS CSPRNG: nothing in the config "
        "determines them; runs do not repeat bit for bit), 'auto' (secure on Flower with DP "
        "or secure aggregation, else reproducible).",
    )
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="Peak dense TFLOP/s of the training device(s), the denominator of the MFU "
        "estimate; none: looked up for known CUDA GPUs (bf16 dense), else MFU is not reported.",
    )


RANDOMNESS_MEANING = {
    "reproducible": "privacy noise, DP-SGD lots, cohorts and secure-aggregation keys are "
    "derived from the run seed: a rerun repeats them and anyone who knows the config can "
    "recompute them (and subtract the noise); for experiments only",
    "secure": "privacy noise, DP-SGD lots, cohorts and secure-aggregation keys are drawn "
    "from the operating system's CSPRNG: no config value determines them, and runs do "
    "not repeat bit for bit",
}
"""What each ``run.randomness`` mode means, for the banner, summary.json and docs."""


class RuntimeConfig(Section):
    engine: Literal["simulation", "flower"] = Field(
        "simulation",
        description="What carries the rounds' messages: 'simulation' (the embedded simulator, "
        "one process) or 'flower' (a Flower SuperLink and one SuperNode per client; the same "
        "round protocol, see docs/deploy.md).",
    )
    superlink: str | None = Field(
        None,
        description="With engine = 'flower': host:port of a running SuperLink to submit the "
        "run to (its nodes already connected); none: start a SuperLink and runtime.nodes "
        "SuperNodes on loopback, run, and stop them.",
    )
    nodes: int | None = Field(
        None,
        ge=1,
        description="With engine = 'flower': the SuperNodes to start on loopback, or to wait "
        "for on runtime.superlink; none: data.num_clients.",
    )
    root_certificates: str | None = Field(
        None,
        description="With runtime.superlink: the CA certificate (PEM) the SuperLink's TLS "
        "certificate is checked against (`fedllm certs superlink` makes one); none: "
        "plaintext, which needs runtime.insecure = true unless the SuperLink is on loopback.",
    )
    insecure: bool = Field(
        False,
        description="With runtime.superlink and no root_certificates: say so to talk to a "
        "SuperLink on another machine in plaintext (anyone on the path reads and alters "
        "every model and update); without it such a run is refused.",
    )
    roster: str | None = Field(
        None,
        description="With engine = 'flower': the federation's members, a TOML file of "
        "[clients] client id = its node's public key (`fedllm certs roster`). The "
        "ServerApp admits only these clients, each node proving it holds its key (a "
        "signature over a fresh challenge with its auth-key); any other node is refused "
        "and reported. Needs each node's auth-key in its node config.",
    )
    clients: list[str] = Field(
        default_factory=list,
        description="With engine = 'flower' and no roster: the federation's members by "
        "name only (not proven: a node may claim any name); other nodes are refused. "
        "Empty and no roster: every node that answers, up to runtime.nodes (loopback "
        "trials; a remote runtime.superlink needs a roster or clients).",
    )


class HardPromptConfig(Section):
    candidates_file: str | None = Field(
        None,
        description="Text file of candidate instructions, one per line (blank lines and "
        "lines starting with '#' skipped); none: use templates.",
    )
    templates: list[str] = Field(
        default_factory=list,
        description="Candidate instructions used when candidates_file is none; empty: the "
        "built-in set (each task phrase with each constraint sentence).",
    )
    placement: Literal["system", "prefix"] = Field(
        "system",
        description="Where the instruction goes: 'system' (the system message) or 'prefix' "
        "(before the first user message).",
    )
    aggregate: Literal["mean", "rank"] = Field(
        "mean",
        description="'mean': loss over every client's answer tokens pooled (nats/token); "
        "'rank': mean of the candidate's rank on each client (Borda).",
    )
    keep: int = Field(
        3, ge=1, description="Best candidates kept: reported, and the parents of mutations."
    )
    mutation_rounds: int = Field(
        2,
        ge=0,
        description="Rounds of mutating the kept candidates and scoring the new ones; "
        "0: only score.",
    )
    mutations_per_round: int = Field(4, ge=1, description="New candidates per mutation round.")
    max_eval_examples: int | None = Field(
        8, ge=1, description="Held-out examples each client scores on; none: its whole eval split."
    )


class Config(Section):
    seed: int = Field(0, description="Fixes sampling, data order, initialisation and dropout.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    public: PublicConfig = Field(default_factory=PublicConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    he: HEConfig = Field(default_factory=HEConfig)
    personal: PersonalConfig = Field(default_factory=PersonalConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    algorithm: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="[algorithm.<name>] tables: the settings of a registered algorithm that "
        "declares a section of its own (its factory's `settings`, a pydantic model), checked "
        "against it at load.",
    )
    aggregator: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="[aggregator.<name>] tables: the settings of a registered aggregator "
        "that declares them (its factory's `settings`; e.g. [aggregator.krum] f = 2), checked "
        "against it at load; server.aggregator picks the one used.",
    )
    attack: AttackConfig = Field(default_factory=AttackConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    hard_prompt: HardPromptConfig = Field(default_factory=HardPromptConfig)

    def settings_of(self, name: str) -> Any:
        """The ``[algorithm.<name>]`` section, validated by the algorithm's ``settings``
        model (its defaults when the table is absent)."""
        from fedllm.components import ALGORITHMS

        return _named_section(ALGORITHMS, self.algorithm, name)

    def aggregator_settings_of(self, name: str) -> Any:
        """The ``[aggregator.<name>]`` section, validated by the aggregator's ``settings``
        model (its defaults when the table is absent)."""
        from fedllm.components import AGGREGATORS

        return _named_section(AGGREGATORS, self.aggregator, name)

    def attack_settings_of(self, name: str) -> Any:
        """The ``[attack.<name>]`` table, validated by the attack's ``settings`` model (its
        defaults when the table is absent)."""
        from fedllm.components import ATTACKS

        return _named_section(ATTACKS, self.attack.settings, name)

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        if self.server.min_clients > self.server.clients_per_round:
            raise ValueError(
                f"server.min_clients = {self.server.min_clients} exceeds "
                f"server.clients_per_round = {self.server.clients_per_round}; "
                "no round could ever be accepted"
            )
        return self

    @model_validator(mode="after")
    def _check_device(self) -> Config:
        if self.run.device != "cpu":
            return self  # whether a GPU is there is checked when the run starts
        cuda_only = [
            ("client.fp16 = true", self.client.fp16, "use client.bf16 = true on the CPU"),
            (
                f"client.offload = {self.client.offload!r}",
                self.client.offload != "none",
                "set client.offload = 'none' on the CPU",
            ),
            (
                f"model.device_map = {self.model.device_map!r}",
                self.model.device_map is not None,
                "remove model.device_map on the CPU",
            ),
        ]
        for setting, present, fix in cuda_only:
            if present:
                raise ValueError(
                    f"{setting} needs a CUDA GPU, but run.device = 'cpu'; set run.device = "
                    f"'cuda' (or 'auto'), or {fix}"
                )
        return self

    @model_validator(mode="after")
    def _check_runtime(self) -> Config:
        runtime = self.runtime
        if runtime.engine == "simulation":
            flower_only = [
                f"runtime.{key} = {value!r}"
                for key, value in (
                    ("superlink", runtime.superlink),
                    ("nodes", runtime.nodes),
                    ("root_certificates", runtime.root_certificates),
                    ("roster", runtime.roster),
                    ("clients", runtime.clients or None),
                    ("insecure", runtime.insecure or None),
                )
                if value is not None
            ]
            if flower_only:
                raise ValueError(
                    f"{', '.join(flower_only)} only applies with runtime.engine = 'flower'; "
                    "set runtime.engine = 'flower', or remove it"
                )
            return self
        if self.federation.mode != "federated":
            raise ValueError(
                f"runtime.engine = 'flower' runs federation.mode = 'federated', not "
                f"{self.federation.mode!r} (it needs every client's data in one place): "
                "use runtime.engine = 'simulation' for it"
            )
        loopback_nodes = runtime.nodes if runtime.superlink is None else None
        if loopback_nodes is not None and loopback_nodes != self.data.num_clients:
            raise ValueError(
                f"runtime.nodes = {loopback_nodes} with data.num_clients = "
                f"{self.data.num_clients}: a loopback deployment starts one SuperNode per "
                "client, and a client without one would never train nor be evaluated; "
                f"set runtime.nodes = {self.data.num_clients} (or remove it)"
            )
        if runtime.root_certificates is not None and runtime.superlink is None:
            raise ValueError(
                "runtime.root_certificates is for a remote runtime.superlink; a loopback "
                "deployment makes its own: set runtime.superlink = 'host:port', or remove it"
            )
        if runtime.roster is not None and runtime.clients:
            raise ValueError(
                "runtime.roster and runtime.clients both name the federation's members: the "
                "roster's clients are the members (proven by their keys); remove "
                "runtime.clients"
            )
        if len(set(runtime.clients)) != len(runtime.clients) or not all(runtime.clients):
            raise ValueError(
                f"runtime.clients = {runtime.clients}: need distinct, non-empty client names"
            )
        if runtime.superlink is not None:
            _check_remote_superlink(runtime)
        return self

    @property
    def guards_privacy(self) -> bool:
        """Some mechanism with a privacy guarantee is on (DP, secure aggregation, HE)."""
        return self.privacy.dp != "none" or self.secagg.enabled or self.he.enabled

    @property
    def randomness(self) -> Literal["reproducible", "secure"]:
        """``run.randomness`` resolved ('auto': secure on Flower with a privacy mechanism)."""
        chosen = self.run.randomness
        if chosen == "auto":
            deployed = self.runtime.engine == "flower"
            return "secure" if deployed and self.guards_privacy else "reproducible"
        return chosen

    @property
    def secure_randomness(self) -> bool:
        """True when privacy draws come from the OS CSPRNG (see ``run.randomness``)."""
        return self.randomness == "secure"

    @model_validator(mode="after")
    def _check_randomness(self) -> Config:
        if (
            self.run.randomness == "reproducible"
            and self.runtime.engine == "flower"
            and self.guards_privacy
        ):
            raise ValueError(
                "run.randomness = 'reproducible' on runtime.engine = 'flower' would let every "
                "party who knows the config recompute the privacy noise and keys: a "
                "deployment with DP or secure aggregation draws them from a CSPRNG; set "
                "run.randomness = 'secure' (or 'auto')"
            )
        return self

    @model_validator(mode="after")
    def _check_privacy(self) -> Config:
        if self.privacy.dp == "local" and self.client.fp16:
            raise ValueError(
                "privacy.dp = 'local' clips each example's true gradient, which fp16 loss "
                "scaling would hide: set client.fp16 = false (client.bf16 works)"
            )
        if self.privacy.dp != "central":
            return self
        server = self.server
        if server.weighting != "uniform":
            raise ValueError(
                "privacy.dp = 'central' bounds each client's influence on a mean of equally "
                "weighted updates; server.weighting = 'examples' would let one client weigh "
                "more than the clip allows: set server.weighting = 'uniform'"
            )
        if server.sampling not in ("uniform", "poisson"):
            raise ValueError(
                f"privacy.dp = 'central' accounts fixed-size uniform cohorts or Poisson "
                f"sampling, not server.sampling = {server.sampling!r}: set server.sampling "
                "= 'uniform' or 'poisson'"
            )
        if self.pipeline.clip_norm is not None:
            raise ValueError(
                "pipeline.clip_norm and privacy.clip_norm both clip the updates; with "
                "privacy.dp = 'central' the privacy clip is the one: remove pipeline.clip_norm"
            )
        return self

    @model_validator(mode="after")
    def _link_canaries(self) -> Config:
        # the data build sees only [data]: it gets the canaries of [privacy] this way
        self.data.link_canaries(self.privacy.canary_spec())
        return self

    @model_validator(mode="after")
    def _check_public(self) -> Config:
        public = self.public
        if public.source is not None and _same_source(public.source, self.data.source):
            raise ValueError(
                f"public.source = {public.source!r} is also data.source: the public and "
                "private data would share text; choose another public corpus, or split the "
                "corpus into two files"
            )
        if public.mix_ratio > 0:
            batch = self.client.batch_size
            n_public = public.public_per_batch(batch)
            if not 0 < n_public < batch:
                raise ValueError(
                    f"public.mix_ratio = {public.mix_ratio} x client.batch_size = {batch} "
                    f"rounds to {n_public} public example(s) per batch; it must leave 1 to "
                    f"{batch - 1}: choose mix_ratio between {1 / batch:.3g} and "
                    f"{(batch - 1) / batch:.3g}, or another batch_size"
                )
        return self


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a raw dict into a :class:`Config`, with readable errors."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, raw)) from None
    _check_components(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML config, apply ``section.key=value`` overrides and validate.

    Raises:
        ConfigError: on a missing file, bad TOML, unknown keys or bad values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: no config file at {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config error: {path} is not valid TOML: {err}") from None
    for item in overrides or []:
        apply_override(raw, item)
    return parse_config(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override in place; the value is read as TOML."""
    if "=" not in item:
        raise ConfigError(f"config error: override {item!r} is not of the form section.key=value")
    dotted, text = item.split("=", 1)
    keys = [k.strip() for k in dotted.split(".")]
    if not all(keys):
        raise ConfigError(f"config error: override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string: --set data.source=chatterbot
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: {dotted} - {key} is a value, not a section")
        node = child
    node[keys[-1]] = value


def dump_config(config: Config) -> str:
    """The resolved config as TOML text (unset optional values written as "none")."""
    return tomli_w.dumps(_none_to_word(config.model_dump()))


def _none_to_word(tree: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _none_to_word(v) if isinstance(v, dict) else (NONE if v is None else v)
        for k, v in tree.items()
    }


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
"""Hosts a plaintext SuperLink may be reached at without runtime.insecure."""


def _check_remote_superlink(runtime: RuntimeConfig) -> None:
    """A run on another machine's SuperLink names its members and speaks TLS, or says
    it is insecure on purpose.

    Raises:
        ValueError: naming what is missing and how to give it.
    """
    host = str(runtime.superlink).rpartition(":")[0] or str(runtime.superlink)
    if runtime.root_certificates is None and host not in LOOPBACK_HOSTS and not runtime.insecure:
        raise ValueError(
            f"runtime.superlink = {runtime.superlink!r} without runtime.root_certificates "
            "would send every model and update in plaintext across the network: give the "
            "CA certificate (`fedllm certs superlink`), or set runtime.insecure = true to "
            "accept that on a network you trust"
        )
    if runtime.roster is None and not runtime.clients:
        raise ValueError(
            f"runtime.superlink = {runtime.superlink!r}: say who the federation's members "
            "are, or any node that reaches the SuperLink joins: runtime.roster = 'roster."
            "toml' (client id = node public key, `fedllm certs roster`; recommended) or "
            "runtime.clients = ['org-a', 'org-b'] (names only)"
        )


def _check_components(config: Config) -> None:
    """The algorithms the config turns on must work together (first: a combination is
    the more useful message), and every component name must be in its registry."""
    from fedllm import components

    unknown = [name for name in config.federation.algorithms if name not in components.ALGORITHMS]
    if unknown:
        raise ConfigError(
            f"config error: federation.algorithms names {unknown}, which are not registered; "
            f"choose from {', '.join(components.ALGORITHMS.names())}"
        )
    _check_named_sections(components.ALGORITHMS, config.algorithm)
    _check_named_sections(components.AGGREGATORS, config.aggregator)
    _check_named_sections(components.ATTACKS, config.attack.settings)
    _check_attack_names(config)
    problems = components.composition_problems(config)
    if problems:
        raise ConfigError("\n".join(f"config error: {p}" for p in problems))
    problems = []
    named = components.named_fields()
    if config.public.source is not None:
        named.append(("public.source", components.DATA_SOURCES))
    for dotted, registry in named:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if registry is components.DATA_SOURCES:
            if not _is_data_file(str(value)) and value not in registry:
                problems.append(f"config error: {dotted} = {_unknown_source(str(value))}")
        elif value not in registry:
            problems.append(f"config error: {dotted} = {registry.unknown_message(value)}")
    if problems:
        raise ConfigError("\n".join(problems))
    _check_aggregator_needs(config)
    _check_product_measures(config)


def _check_attack_names(config: Config) -> None:
    """``attack.data`` names a registered data attack and ``attack.update`` an update
    attack (or ``"none"``)."""
    from fedllm.components import ATTACKS
    from fedllm.security.attacks.settings import NO_ATTACK

    for key in ("data", "update"):
        name = getattr(config.attack, key)
        if name == NO_ATTACK:
            continue
        kinds = {n: getattr(ATTACKS.get(n), "kind", None) for n in ATTACKS.names()}
        valid = sorted(n for n, kind in kinds.items() if kind == key)
        if kinds.get(name) != key:
            raise ConfigError(
                f"config error: attack.{key} = {name!r} is not a registered {key} attack; "
                f"choose 'none' or one of {', '.join(valid) or '(none registered)'}"
            )


def _named_section(registry: Registry[Any], tables: dict[str, dict[str, Any]], name: str) -> Any:
    """The ``[<kind>.<name>]`` table of ``tables`` validated by the ``settings`` model
    of ``registry``'s entry ``name`` (its defaults when the table is absent)."""
    model = getattr(registry.get(name), "settings", None)
    if model is None:
        raise ConfigError(f"config error: {registry.kind} {name!r} declares no settings section")
    return model.model_validate(tables.get(name, {}))


def _check_named_sections(registry: Registry[Any], tables: dict[str, dict[str, Any]]) -> None:
    """Every ``[<kind>.<name>]`` table (``kind``: the registry's, as ``algorithm`` or
    ``aggregator``) names a registered entry with a settings model, and its keys and
    values are valid there."""
    kind = registry.kind
    for name, table in tables.items():
        if name not in registry:
            raise ConfigError(f"config error: [{kind}.{name}]: " + registry.unknown_message(name))
        model = getattr(registry.get(name), "settings", None)
        if model is None:
            raise ConfigError(
                f"config error: [{kind}.{name}]: {kind} {name!r} takes no settings "
                "section; remove the table"
            )
        try:
            model.model_validate(table)
        except ValidationError as err:
            details = "; ".join(
                f"{kind}.{name}.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                for e in err.errors()
            )
            raise ConfigError(f"config error: {details}") from None


def _check_aggregator_needs(config: Config) -> None:
    """A round that reaches the chosen aggregator has as many updates as it needs: an
    aggregator may declare ``fewest_updates(settings) -> (count, why)`` (Krum: 2f + 3),
    and ``server.min_clients`` (below which a round leaves the model unchanged; at most
    ``server.clients_per_round``) must be at least that."""
    from fedllm.components import AGGREGATORS

    name = config.server.aggregator
    if name == "mean":  # takes any count; its module imports torch, which loading must not
        return
    fewest = getattr(AGGREGATORS.get(name), "fewest_updates", None)
    if fewest is None:
        return
    count, why = fewest(config.aggregator_settings_of(name))
    if config.server.min_clients < count:
        raise ConfigError(
            f"config error: server.aggregator = {name!r} needs at least {count} updates a "
            f"round ({why}), but server.min_clients = {config.server.min_clients}: set "
            f"server.min_clients to {count} or more, and server.clients_per_round to at "
            "least that (a round with fewer accepted updates leaves the model unchanged)"
        )


def _check_product_measures(config: Config) -> None:
    """An aggregator setting set to ``"lora_product"`` (Krum's ``distance``, norm bounding's
    ``measure``) measures LoRA's ``B A``: the run must train LoRA factors."""
    from fedllm.components import AGGREGATORS

    name = config.server.aggregator
    if name == "mean" or config.method.kind == "lora":
        return
    if getattr(AGGREGATORS.get(name), "settings", None) is None:
        return
    settings = config.aggregator_settings_of(name)
    for key, value in settings.model_dump().items():
        if value == "lora_product":
            raise ConfigError(
                f"config error: aggregator.{name}.{key} = 'lora_product' measures each LoRA "
                f"layer's B A, but method.kind = {config.method.kind!r} trains no LoRA "
                f"factors: set aggregator.{name}.{key} = 'flat', or method.kind = 'lora'"
            )


def _unknown_source(value: str) -> str:
    """Why ``value`` is not a data source: not a shipped corpus, nor a readable file kind."""
    from fedllm import components
    from fedllm.data.sources import FILE_SUFFIXES

    known = components.DATA_SOURCES.names()
    suffix = Path(value).suffix
    if suffix:
        tail = (
            f"; {suffix} files are not read: convert it to .jsonl (one JSON object per line "
            "with 'text', 'prompt' and 'response', or 'messages')"
        )
    else:
        hint = difflib.get_close_matches(value, known, n=1)
        tail = f" (did you mean {hint[0]!r}?)" if hint else ""
    return (
        f"{value!r} is neither a shipped corpus ({', '.join(known)}) nor a path to a "
        f"{' or '.join(FILE_SUFFIXES)} file{tail}"
    )


def _is_data_file(source: str) -> bool:
    """Whether a data source names a file (by its suffix) rather than a shipped corpus."""
    from fedllm.data.sources import FILE_SUFFIXES

    return Path(source).suffix in FILE_SUFFIXES


def _same_source(a: str, b: str) -> bool:
    """True when two data sources name the same corpus (a name, or the same file)."""
    if a == b:
        return True
    files = [Path(s) for s in (a, b) if _is_data_file(s)]
    return len(files) == 2 and files[0].resolve() == files[1].resolve()


def _describe(err: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        dotted = ".".join(loc) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"config error: {dotted} is not a known key; " + _valid_keys(loc))
        elif item["type"] == "value_error":
            lines.append(f"config error: {item['msg'].removeprefix('Value error, ')}")
        else:
            given = item.get("input")
            lines.append(f"config error: {dotted} = {given!r}: {item['msg']}")
    return "\n".join(lines)


def _valid_keys(loc: list[str]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    valid = list(model.model_fields)
    elsewhere = _sections_with_key(loc[-1])
    if elsewhere:
        fixes = " or ".join(f"--set {_dotted(place, loc[-1])}=..." for place in elsewhere)
        places = ", ".join(elsewhere[:-1]) + " and " if len(elsewhere) > 1 else ""
        tail = f"; {loc[-1]!r} is a key of {places}{elsewhere[-1]} ({fixes})"
    else:
        hint = difflib.get_close_matches(loc[-1], valid, n=1)
        tail = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f"[{'.'.join(loc[:-1])}]" if loc[:-1] else "the top level"
    return f"valid keys in {where}: {', '.join(valid)}{tail}"


def _sections_with_key(key: str) -> list[str]:
    """Where else ``key`` is a valid key: "the top level" and/or "[section]" names."""
    places = []
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if key in annotation.model_fields:
                places.append(f"[{name}]")
        elif name == key:
            places.append("the top level")
    return places


def _dotted(place: str, key: str) -> str:
    return key if place == "the top level" else f"{place.strip('[]')}.{key}"
