"""Build the data in a forked child process, so its transient memory never joins the run's.

Reading a corpus (a 40 MB JSON is ~200 MB of Python objects), the partitioners'
imports (flwr-datasets brings datasets, pyarrow, pandas, matplotlib: ~150 MB)
and tokenization peaks leave memory the training process cannot give back,
even once freed. A forked child does that work; only the compact tokenized
result (:class:`fedllm.data.compact.Examples`) comes back, pickled through a
pipe. The child inherits everything registered in the parent (user data
sources, partitioners). Where ``fork`` is not available (macOS, Windows) the
build runs in the process itself.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

T = TypeVar("T")

IN_PROCESS_ENV = "FEDLLM_DATA_IN_PROCESS"
"""Set to 1 to build the data in the run's own process (for debugging the build)."""


class DataBuildError(RuntimeError):
    """The child building the data died without an answer (killed, out of memory)."""


def can_fork() -> bool:
    """Whether the data can be built apart here (``fork`` exists and is not turned off)."""
    return "fork" in multiprocessing.get_all_start_methods() and not os.environ.get(IN_PROCESS_ENV)


def built_apart(build: Callable[[], T]) -> T:
    """``build()``'s result, computed in a forked child where possible.

    An exception the build raises is raised here, as the same exception (its
    traceback from the child is attached as a note).

    Raises:
        DataBuildError: the child exited without answering.
    """
    return start_apart(build).result()


def start_apart(build: Callable[[], T]) -> Pending[T]:
    """Start ``build()`` in a forked child and return at once, so the caller can work
    meanwhile (load the model while the data is tokenized); where forking is not
    possible, ``build()`` runs here when its result is first asked for."""
    if not can_fork():
        return Pending(build)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_run, args=(build, send), name="fedllm-data", daemon=True)
    child.start()
    send.close()
    return Pending(build, child, receive)


class Pending(Generic[T]):
    """A build started by :func:`start_apart`: :meth:`result` waits for it, :meth:`cancel`
    stops it. As a context manager, a build whose result was never taken is cancelled
    on exit."""

    def __init__(
        self,
        build: Callable[[], T],
        child: BaseProcess | None = None,
        receive: Connection | None = None,
    ) -> None:
        self._build: Callable[[], T] | None = build  # None once done or cancelled
        self._child, self._receive = child, receive
        self._done: list[T] = []  # the result, once there is one

    def result(self) -> T:
        """The build's result (waiting for the child, or building here), or its
        exception raised here.

        Raises:
            DataBuildError: the child exited without answering.
            RuntimeError: the build was cancelled.
        """
        if self._done:
            return self._done[0]
        if self._build is None:
            raise RuntimeError("this data build was cancelled; it has no result")
        result = self._build() if self._child is None else self._received()
        self._build = None
        self._done.append(result)
        return result

    def _received(self) -> T:
        """The child's answer (it is joined and the pipe closed)."""
        assert self._child is not None and self._receive is not None
        child, receive = self._child, self._receive
        try:
            status, payload = receive.recv()
        except EOFError:
            child.join()
            raise DataBuildError(
                f"the process building the data exited with code {child.exitcode} before "
                f"it answered (killed, or out of memory?); set {IN_PROCESS_ENV}=1 to build "
                "it in-process"
            ) from None
        finally:
            receive.close()
            self._receive = None
        child.join()
        self._child = None
        if status == "error":
            error, where = payload
            error.add_note(f"raised while building the data in a child process:\n{where}")
            raise error
        result: T = payload
        return result

    def __enter__(self) -> Pending[T]:
        return self

    def __exit__(self, *_: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Stop the build if it has not answered (the caller failed before it needed
        the data); nothing once :meth:`result` returned."""
        if not self._done:
            self._build = None
        if self._child is not None:
            self._child.kill()  # SIGKILL: the run may have turned SIGTERM into a graceful stop
            self._child.join()
            self._child = None
        if self._receive is not None:
            self._receive.close()
            self._receive = None


def _run(build: Callable[[], Any], send: Connection) -> None:
    try:
        answer: tuple[str, Any] = ("ok", build())
    except BaseException as error:
        answer = ("error", (error, traceback.format_exc()))
    try:
        send.send(answer)
    except Exception as error:
        send.send(("error", (RuntimeError(f"{type(error).__name__}: {error}"), "")))
    send.close()
