"""Suite-wide settings: one torch thread, since OpenMP spin-waits make 2 slower on shared cores."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import symusic  # noqa: F401  (its import sets SYMUSIC_* once: before any test, not inside one)
import torch

from staria.paths import midi_dir
from staria.tokenizer import MusicTokenizerWithStyle

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_midi_dir():
    """The shared real-MIDI folder, or a skip that says why it is missing."""
    folder = midi_dir()
    if not folder.is_dir():
        pytest.skip(f"real MIDI folder {folder} is absent (set STARIA_MIDI_DIR to run these tests)")
    return folder


@pytest.fixture(scope="session")
def tokenizer() -> MusicTokenizerWithStyle:
    return MusicTokenizerWithStyle()


@pytest.fixture(scope="module")
def module_data_cache(tmp_path_factory):
    """A data cache of the module's own (`STARIA_DATA_CACHE`), unset again when it ends."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("data_cache")
        patch.setenv("STARIA_DATA_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _process_state_is_left_as_found():
    """A test that leaves the process changed fails, naming what: environment variables, and
    torch's process-wide settings (grad mode, threads, default dtype). An entrypoint called
    in-process must not change them for its caller, nor one test for the next.

    One exception is cleaned up rather than reported: a W&B run started in the test process
    leaves WANDB_SERVICE set; a later subprocess (a SLURM job) would attach to that service,
    which still holds the killed run's id as in use."""
    environment = dict(os.environ)
    torch_state = torch.is_grad_enabled(), torch.get_num_threads(), torch.get_default_dtype()
    yield
    os.environ.pop("WANDB_SERVICE", None)
    changed = sorted(
        key
        for key in set(environment) | set(os.environ)
        if environment.get(key) != os.environ.get(key) and key != "PYTEST_CURRENT_TEST"
    )
    after = torch.is_grad_enabled(), torch.get_num_threads(), torch.get_default_dtype()
    names = ("grad mode", "threads", "default dtype")
    changed += [
        f"torch {n}: {a} -> {b}"
        for n, a, b in zip(names, torch_state, after, strict=True)
        if a != b
    ]
    assert not changed, f"the test changed process state: {changed}"
