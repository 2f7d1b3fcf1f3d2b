"""Generated samples as evaluation reads them: the manifest that `staria-generate` writes.

The manifest fields are documented in docs/evaluation.md; this module is their one reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from staria.errors import RecordFormatError


class ManifestError(RecordFormatError):
    """A manifest that breaks docs/evaluation.md."""


@dataclass(frozen=True)
class GeneratedSample:
    """One generated piece: its MIDI file, what was asked for, the prompt and the token ids.

    `token_ids` is the generated decoder sequence (instrument prefix, form token, `<S>`, section
    tokens and notes, `<E>` if emitted), without a decoder-only prompt part. `prompt_ids` holds
    the conditioning snippets, each starting with its section token; empty when unconditional.
    """

    name: str
    midi_path: Path
    form: str | None
    style: str | None
    token_ids: tuple[int, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    ended_with_eos: bool


def _field(record: dict[str, Any], key: str, types: tuple[type, ...], where: str, path: Path):
    if key not in record:
        raise ManifestError(path, f"{where}.{key}", "missing")
    value = record[key]
    if not isinstance(value, types):
        raise ManifestError(path, f"{where}.{key}", f"{value!r} is not {types}")
    return value


def _int_list(value: Any, key: str, path: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
        raise ManifestError(path, key, "is not a list of integer token ids")
    return tuple(value)


def read_manifest(path: str | Path) -> list[GeneratedSample]:
    """The samples a manifest lists, with `file` resolved against the manifest's folder."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(path, "<file>", f"unreadable JSON ({error})") from error
    records = _field(manifest, "samples", (list,), "manifest", path)
    samples = []
    for index, record in enumerate(records):
        where = f"samples[{index}]"
        file = _field(record, "file", (str,), where, path)
        prompts = _field(record, "prompt_ids", (list,), where, path)
        samples.append(
            GeneratedSample(
                name=Path(file).stem,
                midi_path=path.parent / file,
                form=_field(record, "form", (str, type(None)), where, path),
                style=_field(record, "style", (str, type(None)), where, path),
                token_ids=_int_list(record.get("token_ids"), f"{where}.token_ids", path),
                prompt_ids=tuple(
                    _int_list(snippet, f"{where}.prompt_ids[{i}]", path)
                    for i, snippet in enumerate(prompts)
                ),
                ended_with_eos=_field(record, "ended_with_eos", (bool,), where, path),
            )
        )
    return samples
