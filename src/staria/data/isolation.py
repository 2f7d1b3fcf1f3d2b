"""Per-item work in worker processes that no single input can take down.

Bulk indexing meets files that crash, hang or exhaust memory in the libraries below it. Each
item runs in a long-lived worker process with a wall-clock deadline and a cap on the memory
the worker may add to what it held when it started; an item that raises, crashes its worker,
overruns its deadline or its memory is reported as an `ItemFailure` with the reason, the
worker is replaced, and the other items go on. Workers die with the process that started
them (Linux: a parent-death signal), so killing a run never leaves them working.

Items travel in batches and their results come back a batch at a time (or every
`_FLUSH_S`), so the per-item cost of the pipe and of waking the parent is shared. Which item
a worker is on, and since when, sits in a small shared array the parent reads only when a
deadline passes or a worker dies: that item is the one that failed; the others of its
batches, done or not, go to the next worker.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

_PR_SET_PDEATHSIG = 1
_START_ATTEMPTS = 3  # fresh workers tried before the pool gives up on starting any
_BATCH = 32  # items per message at most (fewer when few are left, to keep every worker busy)
_FLUSH_S = 0.1  # a worker sends what it has done at least this often
_FLUSH_BYTES = 2**20  # and as soon as its results hold this much
_START_GRACE_S = 60.0  # a fresh worker's imports and `setup`, before its first item's time runs


@dataclass(frozen=True)
class WorkerLimits:
    """What one item may cost its worker: wall-clock seconds, and MiB of address space added
    to the worker's own (numba, numpy and the tokenizer tables are not counted)."""

    timeout_s: float = 300.0
    memory_mib: int = 8192

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.memory_mib > 0):
            raise ValueError(f"worker limits must be positive, got {self}")


@dataclass(frozen=True)
class ItemFailure:
    """Why an item gave no result: its exception, or what happened to its worker."""

    reason: str


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent exited before the request took effect
        os._exit(1)


def _cap_address_space(extra_mib: int) -> None:
    """Let this process map at most `extra_mib` MiB beyond what it maps now."""
    try:
        pages = int(open("/proc/self/statm").read().split()[0])  # noqa: SIM115
    except OSError:
        return
    current = pages * os.sysconf("SC_PAGE_SIZE")
    limit = current + extra_mib * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _serve(
    connection: Connection,
    progress: Any,
    setup: Callable[[], Any] | None,
    function: Callable[[Any, Any], Any],
    memory_mib: int,
) -> None:
    """Worker loop: receive batches of (index, item), send lists of (index, ok, result or
    reason) until the pipe closes; `progress` holds [index being worked on or -1, its start
    on the monotonic clock; before any item, when `setup` finished (0: not yet)]."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    state = setup() if setup is not None else None
    _cap_address_space(memory_mib)
    progress[1] = time.monotonic()  # set up: from now on the items' time runs
    while True:
        try:
            batch = connection.recv()
        except EOFError:  # the parent went away
            return
        replies, held, sent_at = [], 0, time.monotonic()
        for index, item in batch:
            progress[1] = time.monotonic()  # the start first: the parent reads index, start
            progress[0] = index
            replies.append(_reply(function, state, index, item))
            held += _result_bytes(replies[-1][2])
            # Held results count against the next item's memory cap: sent when they are big.
            if held > _FLUSH_BYTES or time.monotonic() - sent_at > _FLUSH_S:
                _send(connection, replies)
                replies, held, sent_at = [], 0, time.monotonic()
        _send(connection, replies)
        progress[0] = -1


def _reply(function: Callable[[Any, Any], Any], state: Any, index: int, item: Any) -> tuple:
    """(index, True, result), or (index, False, reason) when the item raised: one item's
    failure, whatever it is, is that item's result. No reference to the result stays here."""
    try:
        return index, True, function(state, item)
    except Exception as error:
        return index, False, f"{type(error).__name__}: {getattr(error, 'reason', error)}"


def _result_bytes(value: Any) -> int:
    """Bytes a result holds in arrays and byte strings (inside tuples and lists): an estimate
    that leaves out small Python objects."""
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, tuple | list):
        return sum(_result_bytes(part) for part in value)
    return int(getattr(value, "nbytes", 0))


def _send(connection: Connection, replies: list[tuple]) -> None:
    """Send the replies in one message, or one by one if together they cannot be pickled (in
    the memory the worker has, or at all): an item whose own result cannot be is reported
    as such."""
    if not replies:
        return
    try:
        connection.send(replies)
        return
    except Exception:  # MemoryError or a result that does not pickle: find whose, one by one
        pass
    for index, ok, result in replies:
        try:
            connection.send([(index, ok, result)])
        except MemoryError:
            connection.send([(index, False, "MemoryError: result too large to return")])
        except Exception as error:  # a result that does not pickle is its item's failure
            connection.send([(index, False, f"result cannot be returned: {error}")])


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker killed by signal {-exitcode}"
    return f"worker exited with code {exitcode}"


class _Worker:
    """One worker process, its end of the pipe, the items handed to it (oldest first) and the
    shared [item index, start] it updates as it goes."""

    def __init__(
        self, context: Any, setup: Callable | None, function: Callable, memory_mib: int
    ) -> None:
        self.connection, child = context.Pipe()
        self.progress = context.RawArray("d", [-1.0, 0.0])
        self.process = context.Process(
            target=_serve,
            args=(child, self.progress, setup, function, memory_mib),
            daemon=True,
        )
        self.process.start()
        child.close()
        self.in_flight: deque[tuple[int, Any]] = deque()
        self.heard_at = 0.0  # when it last took work while idle, or last replied

    def give(self, batch: list[tuple[int, Any]]) -> bool:
        """Hand over a batch; False if the worker is gone (it died after its last reply)."""
        try:
            self.connection.send(batch)
        except OSError:
            return False
        if not self.in_flight:
            self.heard_at = time.monotonic()
        self.in_flight.extend(batch)
        return True

    def took(self, index: int) -> None:
        """The reply for the oldest item came."""
        given, _ = self.in_flight.popleft()
        assert given == index, f"worker replied for item {index}, expected {given}"
        self.heard_at = time.monotonic()

    def current(self) -> tuple[int | None, float]:
        """The item it is working on (None: between items, or not set up yet) and since when
        its time runs."""
        while True:
            index, start = self.progress[0], self.progress[1]
            if self.progress[0] == index:  # not torn by a write in between
                break
        if index >= 0 and any(given == index for given, _ in self.in_flight):
            return int(index), max(start, self.heard_at)
        if start == 0.0:  # still importing and running `setup`: not the first item's time yet
            return None, self.heard_at + _START_GRACE_S
        return None, max(start, self.heard_at)

    def stop(self) -> None:
        """Kill the worker (it holds nothing worth saving) and reap it."""
        self.process.kill()
        self.process.join()
        self.connection.close()


def _hand_out(pending: deque, pool: list[_Worker], fresh: Callable[[], _Worker]) -> None:
    """Give batches round-robin, one per worker per pass, until each holds two (it starts the
    next while the parent takes in one) or nothing is left. A worker that died idle is
    replaced (`_START_ATTEMPTS` times at most); one that died holding work is reported by
    the caller's wait."""
    given = True
    while pending and given:
        given = False
        for slot in range(len(pool)):
            worker, attempts = pool[slot], 0
            if not pending or len(worker.in_flight) > _BATCH:
                continue
            size = max(1, min(_BATCH, len(pending) // (2 * len(pool))))
            batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            while not worker.give(batch):
                if worker.in_flight:  # it died holding work: reported by the caller's wait
                    pending.extendleft(reversed(batch))
                    break
                attempts += 1
                if attempts == _START_ATTEMPTS:
                    code = worker.process.exitcode
                    raise RuntimeError(f"workers exit before taking work (exit code {code})")
                worker.stop()
                pool[slot] = worker = fresh()
            else:
                given = True


def map_isolated(
    function: Callable[[Any, Any], Any],
    items: Iterable[Any],
    workers: int,
    limits: WorkerLimits = WorkerLimits(),
    setup: Callable[[], Any] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield `(position, function(setup(), item) or ItemFailure)` for every item, as they finish.

    `setup` runs once per worker (build lookup tables there) and `function` gets its result
    (None without one); both and the items must pickle. Results come back in completion
    order; the position says whose. Closing the iterator early kills the workers.
    """
    # spawn: workers start clean even when the caller holds threads (torch, a DataLoader), and
    # are the caller's own children, so the parent-death signal fires when it dies (a
    # forkserver's children keep their server, and so themselves, alive).
    context = multiprocessing.get_context("spawn")
    pending = deque(enumerate(items))
    if not pending:
        return
    pool = [
        _Worker(context, setup, function, limits.memory_mib)
        for _ in range(max(1, min(workers, len(pending))))
    ]
    try:
        while True:
            _hand_out(pending, pool, lambda: _Worker(context, setup, function, limits.memory_mib))
            busy = [worker for worker in pool if worker.in_flight]
            if not busy:
                return
            deadline = min(worker.current()[1] for worker in busy) + limits.timeout_s
            ready = set(
                wait(
                    [w.connection for w in busy] + [w.process.sentinel for w in busy],
                    max(0.0, deadline - time.monotonic()),
                )
            )
            for slot, worker in enumerate(pool):
                if not worker.in_flight:
                    continue
                failure, culprit = None, None
                if worker.connection in ready:
                    try:
                        replies = worker.connection.recv()
                    except (EOFError, OSError):
                        worker.process.join()
                        failure = _describe_exit(worker.process.exitcode)
                        culprit = worker.current()[0]
                    else:
                        for index, ok, result in replies:
                            worker.took(index)
                            yield index, result if ok else ItemFailure(result)
                        continue
                elif worker.process.sentinel in ready:
                    worker.process.join()
                    failure = _describe_exit(worker.process.exitcode)
                    culprit = worker.current()[0]
                else:
                    culprit, since = worker.current()  # one read: the item overrunning is blamed
                    if time.monotonic() >= since + limits.timeout_s:
                        failure = f"timed out after {limits.timeout_s:g} s"
                if failure is not None:
                    culprit = worker.in_flight[0][0] if culprit is None else culprit
                    # The rest of its items, done or not, go first to the next worker.
                    pending.extendleft(
                        reversed([entry for entry in worker.in_flight if entry[0] != culprit])
                    )
                    worker.stop()
                    pool[slot] = _Worker(context, setup, function, limits.memory_mib)
                    yield culprit, ItemFailure(failure)
    finally:
        for worker in pool:
            worker.stop()
