"""Suite-wide settings: one torch thread (OpenMP spin-waits make 2 threads slower on shared cores)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402

from staria.paths import midi_dir  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_midi_dir():
    """The shared real-MIDI folder, or a skip that says why it is missing."""
    folder = midi_dir()
    if not folder.is_dir():
        pytest.skip(f"real MIDI folder {folder} is absent (set STARIA_MIDI_DIR to run these tests)")
    return folder
