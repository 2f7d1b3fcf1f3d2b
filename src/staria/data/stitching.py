"""The stitched source of synthetic pieces: each letter is the beginning of a different real MIDI
file, files dealt to (split, form) pools so no file serves two splits; style labels from a
`metadata.json` beside the files (docs/data-format.md)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from staria.data.labels import SPLITS
from staria.data.section_material import SectionMaterial, SynthesisError, on_grid
from staria.tokenizer import TIME_STEP_MS, MidiReadError, read_notes, scan_midi_files

if TYPE_CHECKING:
    from staria.data.synthetic import SynthesisConfig

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class SourceFile:
    """A real MIDI file usable as section material, with its style labels if metadata gives them."""

    name: str
    material: SectionMaterial
    style: dict[str, str | None] | None


def stitched_materials(
    form: str, pool: list[SourceFile], rng: np.random.Generator
) -> tuple[dict[str, SectionMaterial], dict[str, str | None] | None, dict[str, str]]:
    """Each letter of `form` from a different file of `pool`: (materials, the style the files
    share, each letter's file name)."""
    letters = sorted(set(form))
    chosen = [pool[i] for i in rng.choice(len(pool), len(letters), replace=False)]
    materials = {letter: source.material for letter, source in zip(letters, chosen, strict=True)}
    origins = {letter: source.name for letter, source in zip(letters, chosen, strict=True)}
    return materials, shared_style([source.style for source in chosen]), origins


def shared_style(styles: list[dict[str, str | None] | None]) -> dict[str, str | None] | None:
    """The style fields every source agrees on; null when no source has metadata."""
    if any(style is None for style in styles):
        return None
    keys = set().union(*styles)
    return {
        key: styles[0].get(key) if len({s.get(key) for s in styles}) == 1 else None
        for key in sorted(keys)
    }


def source_pools(
    config: SynthesisConfig, plan: dict[str, list[str]]
) -> dict[tuple[str, str], list[SourceFile]]:
    """Deal usable source files to (split, form) pools, no file in two pools, fixed by the seed."""
    sources = usable_sources(config)
    order = np.random.default_rng(config.seed).permutation(len(sources))
    sources = [sources[i] for i in order]
    letters_needed = {form: len(set(form)) for form in config.forms}
    pools: dict[tuple[str, str], list[SourceFile]] = {}
    splits_used = [split for split in SPLITS if any(split in splits for splits in plan.values())]
    need = {
        split: sum(n for f, n in letters_needed.items() if split in plan[f])
        for split in splits_used
    }
    fractions = {
        "train": 1 - config.val_fraction - config.test_fraction,
        "val": config.val_fraction,
        "test": config.test_fraction,
    }
    if len(sources) < sum(need.values()):
        raise SynthesisError(
            f"stitching forms {config.forms} needs {sum(need.values())} distinct usable source "
            f"files (each form and split its own), found {len(sources)} in "
            f"{[str(d) for d in config.source_dirs]}"
        )
    spare = len(sources) - sum(need.values())
    start = 0
    for split in splits_used:
        share = need[split] + int(spare * fractions[split] / sum(fractions[s] for s in splits_used))
        if split == splits_used[-1]:
            share = len(sources) - start
        split_sources = iter(sources[start : start + share])
        start += share
        forms = [form for form in config.forms if split in plan[form]]
        for form in forms:
            pools[split, form] = [next(split_sources) for _ in range(letters_needed[form])]
        for index, source in enumerate(split_sources):
            pools[split, forms[index % len(forms)]].append(source)
    return pools


def usable_sources(config: SynthesisConfig) -> list[SourceFile]:
    """Readable files holding at least `min_tokens` note tokens; others are logged and skipped."""
    sources = []
    for source_dir in config.source_dirs:
        metadata_path = source_dir / METADATA_FILE
        metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        for path in scan_midi_files([source_dir]):
            relative = path.relative_to(source_dir.resolve()).as_posix()
            try:
                notes = read_notes(path)
            except MidiReadError as error:
                log.warning("skipping source %s: %s", path, error.reason)
                continue
            onset = on_grid(notes.start_ms - notes.start_ms[0])
            end = np.maximum(on_grid(notes.end_ms - notes.start_ms[0]), onset + TIME_STEP_MS)
            distinct_onsets = np.unique(onset)
            cut_points = np.append(distinct_onsets[1:], end.max())
            material = SectionMaterial(
                notes.family, notes.pitch, notes.velocity, onset, end, cut_points
            )
            if material.capacity < config.min_tokens:
                log.info("skipping source %s: %d note tokens < min_tokens", path, material.capacity)
                continue
            sources.append(
                SourceFile(f"{source_dir.name}/{relative}", material, metadata.get(relative))
            )
    return sources
