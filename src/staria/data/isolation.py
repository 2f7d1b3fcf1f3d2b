"""Per-item work in worker processes that no single input can take down.

Bulk indexing meets files that crash, hang or exhaust memory in the libraries below it. Each
item runs in a long-lived worker process with a wall-clock deadline and a cap on the memory
the worker may add to what it held when it started; an item that raises, crashes its worker,
overruns its deadline or its memory is reported as an `ItemFailure` with the reason, the
worker is replaced, and the other items go on. Workers die with the process that started
them (Linux: a parent-death signal), so killing a run never leaves them working.
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
    setup: Callable[[], Any] | None,
    function: Callable[[Any, Any], Any],
    memory_mib: int,
) -> None:
    """Worker loop: receive (index, item), send (index, ok, result or reason) until None."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    state = setup() if setup is not None else None
    _cap_address_space(memory_mib)
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent went away
            return
        index, item = message
        try:
            reply = (index, True, function(state, item))
        except Exception as error:  # one item's failure, whatever it is, is that item's result
            reply = (index, False, f"{type(error).__name__}: {getattr(error, 'reason', error)}")
        try:
            connection.send(reply)
        except MemoryError:
            connection.send((index, False, "MemoryError: result too large to return"))


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker killed by signal {-exitcode}"
    return f"worker exited with code {exitcode}"


class _Worker:
    """One worker process, its end of the pipe, and the item it is working on."""

    def __init__(
        self, context: Any, setup: Callable | None, function: Callable, memory_mib: int
    ) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, setup, function, memory_mib), daemon=True
        )
        self.process.start()
        child.close()
        self.index: int | None = None
        self.deadline = 0.0

    def give(self, index: int, item: Any, timeout_s: float) -> bool:
        """Hand over an item; False if the worker is gone (it died after its last reply)."""
        try:
            self.connection.send((index, item))
        except OSError:
            return False
        self.index, self.deadline = index, time.monotonic() + timeout_s
        return True

    def stop(self) -> None:
        """Kill the worker (it holds nothing worth saving) and reap it."""
        self.process.kill()
        self.process.join()
        self.connection.close()


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
            for slot, worker in enumerate(pool):
                if worker.index is None and pending:
                    index, item = pending.popleft()
                    for _ in range(_START_ATTEMPTS):
                        if worker.give(index, item, limits.timeout_s):
                            break
                        worker.stop()
                        pool[slot] = worker = _Worker(context, setup, function, limits.memory_mib)
                    else:
                        code = worker.process.exitcode
                        raise RuntimeError(f"workers exit before taking work (exit code {code})")
            busy = [worker for worker in pool if worker.index is not None]
            if not busy:
                return
            timeout = max(0.0, min(worker.deadline for worker in busy) - time.monotonic())
            ready = set(
                wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout)
            )
            for slot, worker in enumerate(pool):
                if worker.index is None:
                    continue
                failure = None
                if worker.connection in ready:
                    try:
                        index, ok, result = worker.connection.recv()
                    except (EOFError, OSError):
                        worker.process.join()
                        failure = _describe_exit(worker.process.exitcode)
                    else:
                        worker.index = None
                        yield index, result if ok else ItemFailure(result)
                        continue
                elif worker.process.sentinel in ready:
                    worker.process.join()
                    failure = _describe_exit(worker.process.exitcode)
                elif time.monotonic() >= worker.deadline:
                    failure = f"timed out after {limits.timeout_s:g} s"
                if failure is not None:
                    index = worker.index
                    worker.stop()
                    pool[slot] = _Worker(context, setup, function, limits.memory_mib)
                    yield index, ItemFailure(failure)
    finally:
        for worker in pool:
            worker.stop()
