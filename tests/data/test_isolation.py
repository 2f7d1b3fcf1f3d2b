"""Isolated workers: a crash, hang, memory blow-up, exception or exit costs one item, not the run,
and killing the run kills its workers."""

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from staria.data.isolation import ItemFailure, WorkerLimits, map_isolated
from tests.processes import gone_within, running


def _work(offset, item):
    """Module level, so workers can import it: each hostile item misbehaves in its own way."""
    if item == "raise":
        raise ValueError("bad item")
    if item == "segfault":
        ctypes.string_at(0)
    if item == "hang":
        time.sleep(3600)
    if item == "memory":
        return int(np.ones(2**31, dtype=np.uint8).sum())  # 2 GiB, past the 256 MiB cap
    if item == "exit":
        os._exit(3)
    if item == "pid":
        return os.getpid()
    if item == "huge":  # fits the cap, but pickling it for the pipe does not
        return b"x" * (160 * 2**20)
    if item == "unpicklable":
        return lambda: None
    return item + offset


def _offset():
    return 1000


def test_each_failure_costs_its_item_only_and_the_rest_finish():
    hostile = ["raise", "segfault", "hang", "memory", "exit"]
    items = [*range(6), *hostile, *range(6, 12)]
    limits = WorkerLimits(timeout_s=5, memory_mib=256)
    outcomes = dict(map_isolated(_work, items, workers=2, limits=limits, setup=_offset))
    assert sorted(outcomes) == list(range(len(items)))
    for position, item in enumerate(items):
        if isinstance(item, int):
            assert outcomes[position] == item + 1000
    reasons = {item: outcomes[items.index(item)] for item in hostile}
    assert all(isinstance(reason, ItemFailure) for reason in reasons.values())
    assert reasons["raise"].reason == "ValueError: bad item"
    assert reasons["segfault"].reason == "worker killed by SIGSEGV"
    assert reasons["hang"].reason == "timed out after 5 s"
    assert reasons["memory"].reason.startswith("MemoryError")
    assert reasons["exit"].reason == "worker exited with code 3"


EXPECTED_REASONS = {
    "raise": "ValueError: bad item",
    "segfault": "worker killed by SIGSEGV",
    "exit": "worker exited with code 3",
    "hang": "timed out after 1 s",
    "memory": "MemoryError: ",
    "huge": "MemoryError: result too large to return",
    "unpicklable": "result cannot be returned: ",
}


@pytest.mark.parametrize("seed", range(10))
def test_any_order_of_failures_costs_exactly_the_failing_items(seed):
    """Workers hold two items at once: a failure must be blamed on the item being worked on,
    and the one waiting behind it handed on, whatever runs of failures come in a row."""
    rng = np.random.default_rng(seed)
    kinds = ["raise", "segfault", "exit", "memory", "huge", "unpicklable"]
    hostile = list(rng.choice(kinds, size=6)) + ["hang"] * (seed == 0)
    items = [*range(8), *hostile]
    rng.shuffle(items)
    items = [item if isinstance(item, str) else int(item) for item in items]
    limits = WorkerLimits(timeout_s=1, memory_mib=256)
    workers = 1 + seed % 3
    outcomes = dict(map_isolated(_work, items, workers=workers, limits=limits, setup=_offset))
    assert sorted(outcomes) == list(range(len(items)))
    for position, item in enumerate(items):
        if isinstance(item, str):
            expected = EXPECTED_REASONS[item]
            if item in ("memory", "unpicklable"):  # the rest of the text is numpy's, pickle's
                assert outcomes[position].reason.startswith(expected), (position, items)
            else:
                assert outcomes[position] == ItemFailure(expected), (position, items)
        else:
            assert outcomes[position] == item + 1000, (position, items)


def _slow_offset():
    time.sleep(2)  # longer than the items' timeout: a worker's start is not its first item's
    return 1000


def test_every_worker_gets_work_and_setup_time_is_not_an_items_time():
    limits = WorkerLimits(timeout_s=1, memory_mib=256)
    outcomes = dict(map_isolated(_work, ["pid"] * 4, workers=2, limits=limits, setup=_slow_offset))
    assert not any(isinstance(pid, ItemFailure) for pid in outcomes.values()), outcomes
    assert len(set(outcomes.values())) == 2  # both workers were handed items


def test_closing_early_kills_the_workers():
    outcomes = map_isolated(_work, ["pid", "pid", "hang", "hang"], workers=2)
    pids = {next(outcomes)[1], next(outcomes)[1]}
    outcomes.close()
    assert not any(running(pid) for pid in pids)


_RUN_UNTIL_KILLED = """
import sys
from tests.data.test_isolation import _work
from staria.data.isolation import map_isolated
outcomes = map_isolated(_work, ["pid", "pid", "hang", "hang"], workers=2)
print(next(outcomes)[1], next(outcomes)[1], flush=True)
for _ in outcomes:
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_killing_the_parent_kills_its_workers():
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN_UNTIL_KILLED],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    workers = [int(pid) for pid in process.stdout.readline().split()]
    assert len(workers) == 2 and all(running(pid) for pid in workers)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert gone_within(workers, 30)
