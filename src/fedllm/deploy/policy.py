"""A node's own rules over what the server's configuration may make it do.

On Flower the server chooses the configuration (TOML in the run config) and every node
builds its client side from it. Left alone, that lets the server pick which files a
node reads and what its clients do. A node's config (``--node-config`` of
``flower-supernode``) therefore also says what its owner allows:

* which files the node reads. A config value that names a file on the node is
  refused unless the node config allows it, before anything is read:
  ``public.source`` must be one of the files in ``public``; ``data.source`` in
  partition mode one of the files in ``corpus``. For ``secagg.roster``,
  ``he.secret_context`` and a ``model.name`` that is a local directory the node reads
  its own file instead (``roster``, ``he-secret-context``, ``model``), or refuses the
  run without one. Shipped corpora, presets, the shipped model and hub ids name no
  file of the node's and stay allowed.
* what the run must be: ``require-dp`` (``local``, ``central`` or ``any``),
  ``min-noise-multiplier``, ``require-secagg`` (SecAgg+ or CKKS), checked when the
  node is built and again on every message;
* how far the server may take it: ``max-rounds`` (a message of a later round is
  refused) and ``max-bytes`` (the replies of the whole run, counted in the node's
  state folder, so a restarted worker goes on counting).

A violation raises :class:`~fedllm.deploy.errors.NodeRefusal`, whose message names the
rule and what the server asked (never the node's paths or data: those stay in the
node's log); a bad value in the node config itself raises
:class:`~fedllm.deploy.link.NodeConfigError` naming the valid values. Parsing the node
config imports the standard library only (a ClientApp may check it before a worker
starts); the checks against a configuration import the training stack.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from fedllm.deploy.errors import NodeRefusal
from fedllm.deploy.link import NodeConfigError

if TYPE_CHECKING:
    from fedllm.config import Config
    from fedllm.message import Message
    from fedllm.protocol.engine import ClientHandler
    from fedllm.types import ClientId

LOGGER = logging.getLogger(__name__)

RequiredDP = Literal["local", "central", "any"]
REQUIRE_DP: tuple[RequiredDP, ...] = ("local", "central", "any")
"""What ``require-dp`` may say: DP-SGD on this node, noise the server adds, either."""

DATA_FILES = (".jsonl", ".txt")
"""The files a data source reads (``fedllm.data.sources.FILE_SUFFIXES``: spelled out
here, which imports no data stack)."""

BYTES_FILE = "policy-reply-bytes"
"""The file in the node's state folder counting its replies' bytes (``max-bytes``)."""

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
"""What the model loader takes for a hub id when no such local path exists
(``fedllm.model.load``)."""


@dataclass(frozen=True)
class NodePolicy:
    """What a node's owner lets the server's configuration make the node do.

    Attributes:
        public: the public corpus files ``public.source`` may name (resolved paths).
        corpus: the corpus files ``data.source`` may name in partition mode.
        partition: the node holds a partition of the configuration's corpus
            (``partition-id``), not its own file (``data``): it reads ``data.source``.
        model: the node's own model directory, read in place of a local
            ``model.name``; None: a ``model.name`` that is a local path is refused.
        roster: the node's own SecAgg+ roster, read in place of ``secagg.roster``.
        he_secret_context: the node's own CKKS secret context, read in place of
            ``he.secret_context``.
        require_dp: the differential privacy the run must have; None: any or none.
        min_noise_multiplier: the least DP noise multiplier the run may use.
        require_secagg: the run must aggregate securely (SecAgg+ or CKKS).
        max_rounds: the last round the node answers.
        max_bytes: the most bytes the node's replies may add up to over the run.
    """

    public: tuple[Path, ...] = ()
    corpus: tuple[Path, ...] = ()
    partition: bool = True
    model: Path | None = None
    roster: Path | None = None
    he_secret_context: Path | None = None
    require_dp: RequiredDP | None = None
    min_noise_multiplier: float | None = None
    require_secagg: bool = False
    max_rounds: int | None = None
    max_bytes: int | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodePolicy:
        """The policy a node config sets (keys it does not give: no rule).

        Raises:
            NodeConfigError: a bad value, naming the key and the valid values.
        """
        return cls(
            public=_files(node_config, "public"),
            corpus=_files(node_config, "corpus"),
            partition="data" not in node_config,
            model=_path(node_config, "model"),
            roster=_path(node_config, "roster"),
            he_secret_context=_path(node_config, "he-secret-context"),
            require_dp=_choice(node_config, "require-dp"),
            min_noise_multiplier=_number(node_config, "min-noise-multiplier"),
            require_secagg=_flag(node_config, "require-secagg"),
            max_rounds=_count(node_config, "max-rounds"),
            max_bytes=_count(node_config, "max-bytes"),
        )

    def node_run_config(self, config: Config) -> Config:
        """The configuration this node runs: ``config`` with the node's own files in
        place of the server's, once every file it names is one the node allows.

        Nothing is read here (a local ``model.name`` is only looked up).

        Raises:
            NodeRefusal: a file the node config does not allow.
        """
        self.check_public(config.public.source)
        if self.partition:
            self.check_corpus(config.data.source)
        update: dict[str, object] = {}
        if _is_model_path(config.model.name):
            own = self._own(self.model, "model.name", config.model.name, "model", "/path/model")
            update["model"] = config.model.model_copy(update={"name": own})
        if config.secagg.roster is not None:
            own = self._own(
                self.roster, "secagg.roster", config.secagg.roster, "roster", "/path/roster.toml"
            )
            update["secagg"] = config.secagg.model_copy(update={"roster": own})
        if config.he.secret_context is not None:
            own = self._own(
                self.he_secret_context,
                "he.secret_context",
                config.he.secret_context,
                "he-secret-context",
                "/path/he-secret.ctx",
            )
            update["he"] = config.he.model_copy(update={"secret_context": own})
        return config.model_copy(update=update) if update else config

    def check_public(self, source: str | None) -> None:
        """Refuse a ``public.source`` file that ``public`` does not list.

        Raises:
            NodeRefusal: naming ``public.source`` and the ``public`` node-config key.
        """
        if source is not None and _is_data_file(source):
            self._allowed(source, self.public, "public.source", "public", "public corpus")

    def check_corpus(self, source: str) -> None:
        """Refuse a ``data.source`` file (partition mode) that ``corpus`` does not list.

        Raises:
            NodeRefusal: naming ``data.source`` and the ``corpus`` node-config key.
        """
        if _is_data_file(source):
            self._allowed(source, self.corpus, "data.source", "corpus", "corpus")

    def check_run(self, config: Config, noise: float | None = None) -> None:
        """Refuse a run that lacks the privacy the node requires.

        Args:
            config: the node's configuration.
            noise: the run's DP noise multiplier (:func:`run_noise`) when known; else
                ``privacy.noise_multiplier`` where it is set, and the check of a derived
                one waits until it is known.

        Raises:
            NodeRefusal: naming the rule and what the run has.
        """
        privacy = config.privacy
        dp = privacy.dp
        if self.require_dp is not None and dp not in _KINDS[self.require_dp]:
            _refuse(f"require-dp = {self.require_dp}, but the run has privacy.dp = {dp!r}")
        if self.require_secagg and not (config.secagg.enabled or config.he.enabled):
            _refuse(
                "require-secagg = true, but the run has secagg.enabled = false and "
                "he.enabled = false"
            )
        least = self.min_noise_multiplier
        if least is None:
            return
        if dp == "none":
            _refuse(f"min-noise-multiplier = {least}, but the run has privacy.dp = 'none'")
        if noise is None:
            noise = privacy.noise_multiplier
        if noise is not None and noise < least:
            source = (
                f"privacy.noise_multiplier = {privacy.noise_multiplier}"
                if privacy.noise_multiplier is not None
                else f"derived from privacy.target_epsilon = {privacy.target_epsilon}"
            )
            what = (
                "its DP-SGD noise multiplier on this node"
                if dp == "local"
                else "the noise multiplier it asks the server to add"
            )
            _refuse(f"min-noise-multiplier = {least}, but {what} is {noise:.4g} ({source})")

    def check_message(self, message: Message) -> None:
        """Refuse a message of a round past ``max-rounds``.

        Raises:
            NodeRefusal: naming the rule and the round asked for.
        """
        if self.max_rounds is not None and message.round > self.max_rounds:
            _refuse(f"max-rounds = {self.max_rounds}, the server asked for round {message.round}")

    def guard(
        self, handler: ClientHandler, config: Config, noise: float | None, state_dir: Path
    ) -> ClientHandler:
        """``handler`` answering only what the policy allows: the run's rules and the
        message's round before it answers, the run's reply bytes (``max-bytes``,
        counted in ``state_dir``) before its reply leaves.

        Args:
            handler: the node's client side.
            config: the node's configuration (the one ``handler`` was built from).
            noise: the run's DP noise multiplier (:func:`run_noise`).
            state_dir: the node's state folder.
        """
        sent = (
            None if self.max_bytes is None else ReplyBytes(state_dir / BYTES_FILE, self.max_bytes)
        )

        def handle(client: ClientId, phase: str, message: Message) -> Message:
            from fedllm.wire import message_bytes

            self.check_run(config, noise)  # a run's config cannot change; checking is cheap
            self.check_message(message)
            reply = handler(client, phase, message)
            if sent is not None:
                sent.charge(message_bytes(reply))
            return reply

        return handle

    def _allowed(
        self, source: str, allowed: tuple[Path, ...], setting: str, key: str, what: str
    ) -> None:
        if _resolved(source) in allowed:
            return
        LOGGER.warning(
            "node policy: %s = %r is %s, not one of this node's %s = %s",
            setting,
            source,
            _resolved(source),
            key,
            [str(path) for path in allowed],
        )
        _refuse(
            f"{setting} is a file this node may not read: its owner allows {what} files "
            f"with {key}='/path/a.jsonl,/path/b.txt' in the node config (the run asks for "
            f"{source!r})"
        )

    def _own(self, own: Path | None, setting: str, value: str, key: str, example: str) -> str:
        """The node's own file for ``setting``, in place of the server's ``value``."""
        if own is not None:
            LOGGER.info(
                "node policy: %s = %r replaced by this node's %s = %s", setting, value, key, own
            )
            return str(own)
        LOGGER.warning(
            "node policy: %s = %r, and this node's config has no %s", setting, value, key
        )
        _refuse(
            f"{setting} names a file, and this node reads only its own: its owner gives it "
            f"with {key}='{example}' in the node config (the run asks for {value!r})"
        )


class ReplyBytes:
    """The bytes of a node's replies over a run (``max-bytes``), kept in a file (mode
    0600) so that a restarted worker goes on counting.

    Args:
        path: the count's file (in the node's state folder).
        limit: the most bytes the replies may add up to.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit

    @property
    def sent(self) -> int:
        """The bytes counted so far (0 before the first reply).

        Raises:
            ValueError: the file holds no count (it was edited or damaged).
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            raise ValueError(
                f"{self.path} should hold the bytes this node's replies added up to, not "
                f"{text[:40]!r}: remove it to count from 0"
            ) from None

    def charge(self, size: int) -> None:
        """Count a reply of ``size`` bytes before it leaves.

        Raises:
            NodeRefusal: it would bring the run's replies past the limit (not counted).
        """
        total = self.sent + size
        if total > self.limit:
            _refuse(
                f"max-bytes = {self.limit}, and this reply ({size:,} bytes) would bring the "
                f"node's replies in this run to {total:,} bytes"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        spare = self.path.with_name(f"{self.path.name}.new")
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(str(total))
            out.flush()
            os.fsync(out.fileno())
        os.replace(spare, self.path)


def allowing(config: Config) -> dict[str, str]:
    """The node-config entries that let a node read every file ``config`` names (its
    own ``model``, ``roster`` and ``he-secret-context`` being the same files): for a
    deployment whose operator owns the server and every node alike (the loopback one).
    Paths are made absolute here, against this process's folder.
    """
    entries: dict[str, str] = {}
    if config.public.source is not None and _is_data_file(config.public.source):
        entries["public"] = str(_resolved(config.public.source))
    if _is_data_file(config.data.source):
        entries["corpus"] = str(_resolved(config.data.source))
    if _is_model_path(config.model.name):
        entries["model"] = str(_resolved(config.model.name))
    if config.secagg.roster is not None:
        entries["roster"] = str(_resolved(config.secagg.roster))
    if config.he.secret_context is not None:
        entries["he-secret-context"] = str(_resolved(config.he.secret_context))
    return entries


def run_noise(config: Config, client: ClientId, examples: int) -> float | None:
    """The DP noise multiplier the run uses, as a node computes it; None without DP.

    Local DP: the node's own DP-SGD noise multiplier, as ``local_dp`` builds it for the
    node's one client (``privacy.noise_multiplier``, or the one that spends
    ``privacy.target_epsilon`` on this client's ``examples`` in ``server.rounds``
    rounds). Central DP: what the configuration asks the server to add
    (``privacy.noise_multiplier``, or the one the server derives for a federation of
    ``data.num_clients``): the server's promise, which the node cannot check.
    """
    privacy = config.privacy
    if privacy.dp == "local":
        from fedllm.client.budget import client_steps
        from fedllm.privacy.plan import plan_local

        lot = config.client.batch_size * config.client.grad_accum
        steps = client_steps(config.client, client, examples, config.seed)
        plan = plan_local(privacy, examples, lot, steps, config.server.rounds)
        return plan.mechanism.noise_multiplier
    if privacy.dp == "central":
        if privacy.noise_multiplier is not None:
            return privacy.noise_multiplier
        from fedllm.privacy.central_dp.stages import central_plan

        return central_plan(config, config.data.num_clients).mechanism.noise_multiplier
    return None


_KINDS: dict[RequiredDP, tuple[str, ...]] = {
    "local": ("local",),
    "central": ("central",),
    "any": ("local", "central"),
}


def _refuse(rule: str) -> NoReturn:
    LOGGER.warning("node policy: refused: %s", rule)
    raise NodeRefusal(f"node policy: {rule}")


def _is_data_file(source: str) -> bool:
    """Whether a data source names a file (a shipped corpus's name names none)."""
    return Path(source).suffix in DATA_FILES


def _is_model_path(name: str) -> bool:
    """Whether the model loader would read ``model.name`` from a local path: neither
    the shipped model, a preset nor a hub id (a hub id's shape that exists here is
    read from here)."""
    from fedllm.model.load import SMOLLM2
    from fedllm.model.presets import is_preset

    if name == SMOLLM2 or is_preset(name):
        return False
    return Path(name).expanduser().exists() or not HUB_ID.fullmatch(name)


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _text(node_config: Mapping[str, object], key: str) -> str | None:
    value = node_config.get(key)
    return None if value is None else str(value).strip()


def _path(node_config: Mapping[str, object], key: str) -> Path | None:
    text = _text(node_config, key)
    if text is None:
        return None
    if not text:
        raise NodeConfigError(f"node {key} = '': give a path, {key}='/path/...'")
    return _resolved(text)


def _files(node_config: Mapping[str, object], key: str) -> tuple[Path, ...]:
    text = _text(node_config, key)
    if text is None:
        return ()
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise NodeConfigError(
            f"node {key} = '': give the files it allows, {key}='/path/a.jsonl,/path/b.txt'"
        )
    bad = [name for name in names if Path(name).suffix not in DATA_FILES]
    if bad:
        raise NodeConfigError(
            f"node {key} = {text!r}: {', '.join(bad)} is not a "
            f"{' or '.join(DATA_FILES)} file; list data files, {key}='/path/a.jsonl,/path/b.txt'"
        )
    return tuple(_resolved(name) for name in names)


def _choice(node_config: Mapping[str, object], key: str) -> RequiredDP | None:
    text = _text(node_config, key)
    if text is None:
        return None
    if text not in REQUIRE_DP:
        raise NodeConfigError(
            f"node {key} = {text!r}: choose one of {', '.join(REQUIRE_DP)} ('local': DP-SGD "
            "on this node; 'central': noise the server adds; 'any': either)"
        )
    return text


def _flag(node_config: Mapping[str, object], key: str) -> bool:
    text = _text(node_config, key)
    if text is None:
        return False
    if text.lower() not in ("true", "false"):
        raise NodeConfigError(f"node {key} = {text!r}: choose true or false")
    return text.lower() == "true"


def _count(node_config: Mapping[str, object], key: str) -> int | None:
    text = _text(node_config, key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise NodeConfigError(f"node {key} = {text!r}: give a whole number of at least 1")
    return value


def _number(node_config: Mapping[str, object], key: str) -> float | None:
    text = _text(node_config, key)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise NodeConfigError(f"node {key} = {text!r}: give a number of at least 0 (e.g. 1.0)")
    return value
