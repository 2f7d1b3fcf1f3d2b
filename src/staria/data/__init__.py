"""Data stage: synthetic and real MIDI pieces, their labels, and the datasets built from them."""

from typing import Any

__all__ = ["MidiDataModule"]


def __getattr__(name: str) -> Any:
    # Lazy, so label and synthesis code (and index workers) run without importing Lightning.
    if name == "MidiDataModule":
        from staria.data.datamodule import MidiDataModule

        return MidiDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
