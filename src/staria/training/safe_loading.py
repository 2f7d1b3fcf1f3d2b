"""Checkpoints and weight files are data: saved as plain containers, loaded without unpickling code.

`torch.load(weights_only=True)` rebuilds tensors, numbers, strings and plain containers and
refuses any other object, so a shared checkpoint or weight file cannot run code on load.
Staria saves its checkpoints in that form (`plain`, applied by every task before a save),
plus numpy arrays (Lightning's RNG states), admitted through `SAFE_GLOBALS`. Loading anything
else (an older checkpoint holding config objects, a file from elsewhere) needs the opt-in
`allow_pickle_runs_code=true`, which unpickles in full: only for files you trust.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

OPT_IN = "allow_pickle_runs_code=true"
try:  # numpy 2 moved its internals to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
# numpy arrays: the reconstructor, the array and dtype classes (their payload is data).
SAFE_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    _reconstruct,
    *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"},
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file that only full unpickling (which can run code) would load; names the file."""


def plain(value: Any) -> Any:
    """`value` as tensors, numpy arrays, numbers, strings and plain dicts/lists/tuples.

    Config objects become containers, paths strings, numpy scalars Python numbers; anything
    else that is not plain data raises `TypeError` naming it, so a save never writes a
    checkpoint that `load` would refuse.
    """
    if isinstance(value, (DictConfig, ListConfig)):
        return plain(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Mapping):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    if isinstance(value, (list, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray, torch.dtype, torch.device, torch.Size)):
        return value
    raise TypeError(f"cannot save {type(value).__qualname__} in a checkpoint: not plain data")


@contextlib.contextmanager
def safe_globals() -> Iterator[None]:
    """Admit `SAFE_GLOBALS` to `weights_only` loads inside the block (Lightning's loads too)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        yield


def load(path: str | Path, allow_pickle_runs_code: bool = False, **kwargs: Any) -> Any:
    """`torch.load` of a checkpoint or weight file, as data unless the caller opted in.

    Raises `UnsafeCheckpointError` (naming the file, what it holds and the opt-in) for a file
    that holds anything but data.
    """
    if allow_pickle_runs_code:
        return torch.load(path, weights_only=False, **kwargs)
    try:
        with safe_globals():
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise unsafe_file_error(path, error) from None


def unsafe_file_error(path: str | Path, error: BaseException) -> UnsafeCheckpointError:
    """The refusal for `path`, keeping torch's account of what it holds (its first lines)."""
    detail = " ".join(str(error).split("\n\n")[0].split())[:400]
    return UnsafeCheckpointError(
        f"{path}: refused to unpickle (it holds more than tensors and plain data: {detail}). "
        f"Loading it in full can run code; if you trust the file, rerun with {OPT_IN}"
    )
