"""Compute in a forked child process, under a memory ceiling that its parent enforces.

The parent (a worker's pool process) keeps everything else: the job's heartbeat, database
writes and storage. The child only computes: it reads and writes local files and sends
messages back through a pipe. A watcher thread in the parent reads them, polls the child's
resident memory every POLL_S and kills it (SIGKILL) when its growth passes the budget, or
when the parent asks it to stop (a cancel). The child also runs with an address-space limit
(RLIMIT_AS), so a single huge allocation fails at once (MemoryError, DuckDB's Out of Memory)
instead of growing until the watcher sees it.

The child dies with its parent (PR_SET_PDEATHSIG on Linux), and leaves through os._exit: it
never runs the parent's exit handlers or touches the connections it inherited.
"""

import contextlib
import ctypes
import gc
import logging
import os
import pickle
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from types import TracebackType
from typing import Any, TypeVar

from services.processing.processors.base import MemoryBudgetExceeded

log = logging.getLogger(__name__)

POLL_S = 0.02  # the watcher's period: memory, the stop flag and messages
PROGRESS_S = 0.05  # the child sends progress at most this often
PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_PDEATHSIG = 1
T = TypeVar("T")
ADDRESS_SPACE_PER_BUDGET = 2
ADDRESS_SPACE_PER_THREAD = 64 * 1024**2


@dataclass(frozen=True)
class Ceiling:
    """How much memory the child may take."""

    budget_bytes: int  # growth of its private resident memory (RSS that is not file-backed)
    address_space_bytes: int | None  # RLIMIT_AS headroom above the parent's at the fork

    @property
    def budget_mib(self) -> int:
        return self.budget_bytes // 1024**2

    @classmethod
    def for_budget(cls, budget_mb: int, threads: int | None = None) -> "Ceiling":
        """The ceiling of a memory budget: its resident growth, and an address-space backstop.

        The address space may grow this much over the parent's, per MiB of budget and per
        thread: a normal 5M-row job grew it by ~260 MiB at a 1 GiB budget (DuckDB's and
        jemalloc's reservations, 8 MiB stacks, 64 MiB glibc arenas). A backstop against one
        huge allocation; the watched resident memory is the ceiling.
        """
        threads = threads or os.cpu_count() or 1
        return cls(
            budget_bytes=budget_mb * 1024**2,
            address_space_bytes=(
                ADDRESS_SPACE_PER_BUDGET * budget_mb * 1024**2
                + ADDRESS_SPACE_PER_THREAD * (threads + 4)
            ),
        )


class ChildCrashed(Exception):
    """The child ended without a result or an error of its own (a signal, an exit code)."""


class ChildStopped(Exception):
    """The parent stopped the child (its `stop` said so)."""


class ChildError(Exception):
    """An error of the child that could not be sent as itself; keeps its type's name."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChildError, (self.type_name, str(self)))


class Channel:
    """The child's end: ordered messages for the parent, and throttled progress."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._sent_progress = 0.0

    def post(self, message: Any) -> None:
        """A message the parent's `messages()` yields, in order."""
        self._connection.send(("post", message))

    def progress(self, payload: Any) -> None:
        """Progress for the parent's `progress` callback; some are skipped (at most one per
        PROGRESS_S)."""
        now = time.monotonic()
        if now - self._sent_progress >= PROGRESS_S:
            self._sent_progress = now
            self._connection.send(("progress", payload))


Work = Callable[[Channel], None]


class Child:
    """Runs `work(channel)` in a forked child under `ceiling`; use as a context manager and
    read `messages()` to the end. Leaving the block kills a child that still runs."""

    def __init__(
        self,
        work: Work,
        ceiling: Ceiling,
        *,
        stop: Callable[[], bool],
        progress: Callable[[Any], None],
    ) -> None:
        self._work, self._ceiling = work, ceiling
        self._stop, self._progress = stop, progress
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._lock = threading.Lock()
        self._status: int | None = None  # waitpid's, once reaped
        self._reason: str | None = None  # why the parent killed it: memory, stopped, failed
        self.pid = 0
        self.peak_bytes = 0  # the highest growth of private memory seen

    def __enter__(self) -> "Child":
        reader, writer = Pipe(duplex=False)
        base_size = _address_space()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            reader.close()
            _run_child(self._work, writer, parent, self._ceiling, base_size)
        writer.close()
        self.pid = pid
        self._base = private_resident(pid) or 0
        self._watcher = threading.Thread(
            target=self._watch, args=(reader,), name=f"child-{pid}", daemon=True
        )
        self._watcher.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._kill(None)
        self._watcher.join()

    def messages(self) -> Iterator[Any]:
        """The child's posted messages until it finishes; raises its error, or
        MemoryBudgetExceeded, ChildStopped, ChildCrashed."""
        failure: BaseException | None = None
        done = False
        while True:
            event = self._events.get()
            kind = event[0]
            if kind == "post":
                yield event[1]
            elif kind == "error":
                failure = failure or event[1]
            elif kind == "done":
                done = True
            else:  # "exit": the child is gone and reaped
                self._raise_for_exit(failure, done)
                return

    def _raise_for_exit(self, failure: BaseException | None, done: bool) -> None:
        status, reason = self._status, self._reason
        assert status is not None
        if reason == "memory":
            raise MemoryBudgetExceeded(self._ceiling.budget_mib)
        if reason == "stopped":
            raise ChildStopped()
        if failure is not None:
            raise failure
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            name = signal.Signals(number).name if number in signal.valid_signals() else number
            if number == signal.SIGKILL:  # not ours: the kernel's out-of-memory killer, likely
                raise MemoryBudgetExceeded(
                    self._ceiling.budget_mib, f"the job's process was killed ({name})"
                )
            raise ChildCrashed(f"the job's process died of signal {name}")
        code = os.WEXITSTATUS(status)
        if code != 0 or not done:
            raise ChildCrashed(f"the job's process exited with code {code} without a result")

    def _kill(self, reason: str | None) -> None:
        """Kill the child unless it was reaped (its pid may be reused then)."""
        with self._lock:
            if self._status is None:
                if reason is not None and self._reason is None:
                    self._reason = reason
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def _watch(self, reader: Connection) -> None:
        try:
            self._relay(reader)
        except BaseException as exc:  # never leave messages() waiting
            log.exception("watching child %d failed", self.pid)
            self._events.put(("error", exc))
            self._kill("failed")
        finally:
            reader.close()
            _, status = os.waitpid(self.pid, 0)
            with self._lock:
                self._status = status
            self._events.put(("exit",))

    def _relay(self, reader: Connection) -> None:
        """Messages to the queue (progress to its callback) until the pipe closes, the child
        passes the ceiling or the parent asks it to stop."""
        while True:
            if reader.poll(POLL_S):
                try:
                    kind, *payload = reader.recv()
                except EOFError:
                    return
                if kind == "progress":
                    self._call_progress(payload[0])
                else:
                    self._events.put((kind, *payload))
            if self._stop():
                self._kill("stopped")
                return
            growth = (private_resident(self.pid) or self._base) - self._base
            self.peak_bytes = max(self.peak_bytes, growth)
            if growth > self._ceiling.budget_bytes:
                log.warning(
                    "child %d took %d MiB, over the budget of %d MiB: killed",
                    self.pid,
                    growth // 1024**2,
                    self._ceiling.budget_mib,
                )
                self._kill("memory")
                return

    def _call_progress(self, payload: Any) -> None:
        try:
            self._progress(payload)
        except Exception:
            log.warning("progress callback failed", exc_info=True)


def call_in_child(function: Callable[[], T], ceiling: Ceiling) -> T:
    """`function()` in a child under `ceiling`: its result, or its error (MemoryBudgetExceeded
    when it grew past the budget)."""

    def work(channel: Channel) -> None:
        channel.post(function())

    with Child(work, ceiling, stop=lambda: False, progress=lambda _: None) as child:
        results = list(child.messages())
    return results[0]  # type: ignore[no-any-return]


def private_resident(pid: int) -> int | None:
    """A process's resident memory that is not file-backed (anonymous: heap, arrays), in bytes;
    None when it cannot be read (the process is gone, or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * PAGE


def _address_space() -> int:
    """This process's virtual memory size in bytes."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * PAGE


def _run_child(
    work: Work, writer: Connection, parent: int, ceiling: Ceiling, base_size: int
) -> None:
    """The child's life: set up, work, report, and _exit (never return into the parent's
    code)."""
    code = 1
    try:
        # Objects inherited from the parent are never collected here: their finalizers (a
        # database connection's, say) would act on the parent's resources.
        gc.freeze()
        _die_with(parent)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                signal.signal(number, signal.SIG_DFL)
        if ceiling.address_space_bytes is not None:
            limit = base_size + ceiling.address_space_bytes
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        channel = Channel(writer)
        try:
            work(channel)
            writer.send(("done",))
            code = 0
        except BaseException as exc:
            writer.send(("error", _portable(exc)))
    except BaseException:  # the pipe is gone: the parent is too, or it stopped reading
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _portable(exc: BaseException) -> BaseException:
    """The exception as the parent can receive it: itself when it pickles, else a ChildError;
    with the child's traceback as a note for the parent's log."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    try:
        exc.add_note(f"in the job's process:\n{text}")
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        copy = ChildError(type(exc).__name__, str(exc))
        copy.add_note(f"in the job's process:\n{text}")
        return copy


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when the thread that forked it ends (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request
        os._exit(1)
