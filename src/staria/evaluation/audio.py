"""Listenable previews of generated MIDI: a short, low-rate mono render that embeds cheaply.

pretty_midi's sine synthesizer needs nothing installed; a General MIDI soundfont through
fluidsynth sounds like a piano, so it is used whenever one is given and pyfluidsynth works.
"""

from __future__ import annotations

import io
import warnings
import wave
from pathlib import Path

import numpy as np
import pretty_midi

PREVIEW_SAMPLE_RATE = 16_000
PREVIEW_SECONDS = 15.0


def render_audio(
    midi_path: str | Path,
    seconds: float = PREVIEW_SECONDS,
    sample_rate: int = PREVIEW_SAMPLE_RATE,
    soundfont: str | Path | None = None,
) -> np.ndarray:
    """The first `seconds` of the MIDI file as float32 samples in [-1, 1].

    Notes starting after the cut are dropped before synthesis, so long pieces render fast.
    pretty_midi's own normalisation is off: it divides by zero on silence, and the preview is
    normalised once here, over the kept window only.
    """
    midi = pretty_midi.PrettyMIDI(str(midi_path))
    for instrument in midi.instruments:
        instrument.notes = [note for note in instrument.notes if note.start < seconds]
    audio = None
    if soundfont is not None:
        try:
            audio = midi.fluidsynth(fs=sample_rate, synthesizer=str(soundfont), normalize=False)
        except (ImportError, ValueError) as error:
            warnings.warn(
                f"fluidsynth with soundfont {soundfont} failed ({error}); using sine waves instead",
                stacklevel=2,
            )
    if audio is None:
        audio = midi.synthesize(fs=sample_rate, normalize=False)
    audio = audio[: int(seconds * sample_rate)]
    peak = np.abs(audio).max(initial=0.0)
    return (audio / peak if peak > 0 else audio).astype(np.float32)


def wav_bytes(audio: np.ndarray, sample_rate: int = PREVIEW_SAMPLE_RATE) -> bytes:
    """16-bit mono PCM WAV, the format every browser plays without codecs."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes((np.clip(audio, -1, 1) * 0.9 * 32767).astype("<i2").tobytes())
    return buffer.getvalue()
