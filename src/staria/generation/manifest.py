"""Write generated samples as MIDI files plus `manifest.json` (fields: docs/evaluation.md).

`staria.evaluation.samples.read_manifest` is the reader; every per-sample field it needs is
written here, plus what a person wants to know: checkpoint, provenance (step, validation
loss, code version), config, seed, prompt and timing.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from staria.generation.sampling import SampledPiece, SamplingTiming
from staria.paths import REPO_ROOT
from staria.tokenizer import MusicTokenizerWithStyle

MANIFEST_FILE = "manifest.json"


class OutputFolderError(ValueError):
    """The output folder holds files that are not an earlier generation's."""


def check_output_folder(out_dir: Path) -> None:
    """An output folder is new, empty, or an earlier generation (it has a manifest), which a
    new one replaces whole; anything else is refused before sampling, naming it."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise OutputFolderError(
            f"out_dir={out_dir} holds files that are not a generation's (no {MANIFEST_FILE}); "
            "give an empty or new folder"
        )


def sample_record(file: str, piece: SampledPiece) -> dict[str, Any]:
    prompt = piece.prompt
    return {
        "file": file,
        "form": prompt.form,
        "style": prompt.style,
        "token_ids": piece.token_ids.tolist(),
        "prompt_ids": [snippet.tolist() for snippet in prompt.snippets],
        "ended_with_eos": piece.ended_with_eos,
        "prompt": {
            "source": prompt.source,
            "sections_from": prompt.sections_from,
            "continue_s": prompt.continue_s,
            "decoder_start_ids": prompt.decoder_start.tolist(),
            "model_prompt_ids": prompt.model_prompt.tolist(),
        },
    }


def write_samples(
    pieces: Sequence[SampledPiece],
    out_dir: str | Path,
    tokenizer: MusicTokenizerWithStyle,
    *,
    checkpoint: str | Path,
    config: Mapping[str, Any],
    seed: int,
    timing: SamplingTiming,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """`sample_000.mid`, ... and the manifest listing them; returns the manifest's path.
    `provenance` (the checkpoint's step and validation loss) is recorded with the code version.

    Written into a hidden folder beside `out_dir`, then swapped in: an earlier generation there
    (files, report and all) is replaced whole, never mixed with the new samples.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    building = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    records = []
    for index, piece in enumerate(pieces):
        file = f"sample_{index:03d}.mid"
        tokenizer.write_midi(tokenizer.decode(piece.token_ids.tolist()), building / file)
        records.append(sample_record(file, piece))
    manifest = {
        "checkpoint": str(checkpoint),
        "provenance": {**(provenance or {}), "commit": code_version()},
        "config": dict(config),
        "seed": seed,
        "timing": {
            "seconds": timing.seconds,
            "generated_tokens": timing.generated_tokens,
            "batches": timing.batches,
            "tokens_per_s": timing.tokens_per_s,
        },
        "samples": records,
    }
    (building / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    replace_folder(building, out_dir)
    return out_dir / MANIFEST_FILE


@functools.cache
def code_version() -> str | None:
    """`git describe`-style commit of the code that ran (`<sha>`, `-dirty` with uncommitted
    changes); None outside a git checkout. Asked once per process (the W&B sample callback
    writes a manifest at every validation)."""

    def git(*args: str) -> str:
        command = ["git", *args]
        return subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha, changes = git("rev-parse", "--short=12", "HEAD"), git("status", "--porcelain", "-uno")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if changes else sha


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`, the earlier `target` (if any) removed once it is swapped
    out; each rename is atomic."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)
