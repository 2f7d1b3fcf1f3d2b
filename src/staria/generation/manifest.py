"""Write generated samples as MIDI files plus `manifest.json` (fields: docs/evaluation.md).

`staria.evaluation.samples.read_manifest` is the reader; every per-sample field it needs is
written here, plus what a person wants to know: checkpoint, config, seed, prompt and timing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from staria.generation.sampling import SampledPiece, SamplingTiming
from staria.tokenizer import MusicTokenizerWithStyle

MANIFEST_FILE = "manifest.json"


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
) -> Path:
    """`sample_000.mid`, ... and the manifest listing them; returns the manifest's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, piece in enumerate(pieces):
        file = f"sample_{index:03d}.mid"
        tokenizer.detokenize(tokenizer.decode(piece.token_ids.tolist())).write(str(out_dir / file))
        records.append(sample_record(file, piece))
    manifest = {
        "checkpoint": str(checkpoint),
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
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return path
