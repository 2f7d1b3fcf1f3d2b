"""`staria-train` with a planted SIGKILL, for the kill tests: `python killable_run.py MODE K
OVERRIDES...` kills the process at the K-th checkpoint-file event of MODE (or never, for
`none`):

- `mid-write`: halfway through writing a checkpoint's bytes (what a kill during `torch.save`
  leaves: a partial file);
- `before-rename`: a file fully written but not yet renamed into place (checkpoints and the
  history alike);
- `none`: run normally (the caller kills it at a random moment, or not at all).
"""

import io
import os
import signal
import sys

import torch

import staria.files as files
import staria.training.checkpointing as checkpointing
from staria.training.cli import main


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant(mode: str, count: int) -> None:
    calls = 0

    def due() -> bool:
        nonlocal calls
        calls += 1
        return calls == count

    if mode == "mid-write":
        real_save = torch.save

        def save(obj, handle, *args, **kwargs):
            if not due() or isinstance(handle, (str, os.PathLike)):
                return real_save(obj, handle, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: buffer.tell() // 2])
            handle.flush()
            kill()

        checkpointing.torch.save = save
    elif mode == "before-rename":
        real_replace = files.replace_atomically

        def replace(partial, path):
            if due():
                kill()
            real_replace(partial, path)

        files.replace_atomically = replace
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    plant(sys.argv[1], int(sys.argv[2]))
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    main()
