"""DataLoader workers that survive the signals meant for the training process.

SLURM signals every process of a job step, and a shell (`kill -- -<pgid>`, Ctrl-C) a whole
process group: DataLoader workers receive the SIGTERM, SIGUSR2 or SIGINT that tells training to
checkpoint and stop. A worker that dies of it makes the DataLoader raise in the main process
before the checkpoint is written. `init_worker` makes each worker ignore SIGINT and SIGUSR2 and
take SIGTERM only from its parent (the DataLoader's own shutdown); the main process decides
when to stop and shuts its workers down itself.
"""

import os
import signal
import threading

from lightning.fabric.utilities.seed import pl_worker_init_function


def _end_on_parent_sigterm(parent: int) -> None:
    """Wait for SIGTERM (blocked in every thread); die of it only when `parent` sent it."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            os.kill(os.getpid(), signal.SIGTERM)  # default action, delivered to this thread


def shield_from_group_signals() -> None:
    """In a worker process: ignore SIGINT and SIGUSR2, and SIGTERM unless the parent sends it."""
    for sig in (signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_end_on_parent_sigterm, args=(os.getppid(),), daemon=True, name="sigterm-filter"
    ).start()


def init_worker(worker_id: int, rank: int = 0) -> None:
    """`worker_init_fn` of every Staria DataLoader: the signal shield, then Lightning's
    per-worker seeding when `seed_everything(workers=True)` asked for it."""
    shield_from_group_signals()
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        pl_worker_init_function(worker_id, rank)
