"""MIDI discovery (`scan_midi_files`) against a straightforward reference over random trees of
files, links to files and folders, link loops and names of every suffix case."""

import os
from pathlib import Path

import numpy as np
import pytest

from staria.tokenizer import scan_midi_files
from staria.tokenizer.midi_io import MIDI_SUFFIXES


def reference_scan(folder: Path) -> list[Path]:
    """Every MIDI-suffixed file under `folder` reached through folders and links, each once by
    its resolved path, in Path order (the implementation this replaced, without its speed-ups)."""
    found, seen = set(), set()
    for current, subfolders, names in os.walk(folder, followlinks=True):
        identity = (os.stat(current).st_dev, os.stat(current).st_ino)
        if identity in seen:
            subfolders.clear()
            continue
        seen.add(identity)
        for name in names:
            path = Path(current) / name
            if path.suffix.lower() in MIDI_SUFFIXES and path.is_file():
                found.add(path.resolve())
    return sorted(found)


def random_tree(root: Path, rng: np.random.Generator) -> None:
    folders = [root]
    for index in range(int(rng.integers(2, 6))):
        parent = folders[int(rng.integers(len(folders)))]
        folders.append(parent / f"d{index}-{'x' * int(rng.integers(3))}")
        folders[-1].mkdir()
    files = []
    for index in range(int(rng.integers(3, 12))):
        suffix = str(rng.choice([".mid", ".MID", ".midi", ".Mid", ".json", ".txt", "", "."]))
        path = folders[int(rng.integers(len(folders)))] / f"f{index}{suffix}"
        path.write_bytes(b"MThd")
        files.append(path)
    for name in ("..mid", ".mid", "x.mid.", ".MIDI", "...midi"):  # suffixes as pathlib sees them
        if rng.integers(2):
            (folders[int(rng.integers(len(folders)))] / name).write_bytes(b"MThd")
    for index in range(int(rng.integers(0, 4))):  # links to files, folders, and back up
        place = folders[int(rng.integers(len(folders)))] / f"link{index}.mid"
        kind = rng.integers(3)
        if kind == 0:
            place.symlink_to(files[int(rng.integers(len(files)))])
        elif kind == 1:
            place.with_suffix("").symlink_to(folders[int(rng.integers(len(folders)))])
        else:
            place.symlink_to(root / "missing.mid")  # dangling


@pytest.mark.parametrize("seed", range(40))
def test_scan_finds_what_the_reference_finds(tmp_path, seed):
    root = tmp_path / "tree"
    root.mkdir()
    random_tree(root, np.random.default_rng(seed))
    assert scan_midi_files([root]) == reference_scan(root)
