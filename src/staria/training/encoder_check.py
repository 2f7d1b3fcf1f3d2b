"""The encoder check: before a pretrained snippet encoder is used, how well its embeddings find
a section's repeat among held-out pieces, against chance and against the same encoder untrained.

For every held-out piece, the opening of each letter's first occurrence is a candidate; the
opening of every later occurrence of a letter (the A of ABA's second A) is a query. A query is
answered by the candidate whose pooled embedding is nearest by cosine; it is right when that is
its own piece's same letter. Every row starts with the same section token (`<A_SECTION>`), so the
letter itself gives nothing away. Chance is 1 / the number of candidates; a model that encodes
the material recovers every repeat of synthetic pieces (identical notes), so the ceiling is 1.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from staria.data.collate import pad_sequences
from staria.data.datasets import PieceSource, SequenceSettings
from staria.files import write_text_atomic
from staria.models.encoder import SnippetEncoder
from staria.statistics import wilson_interval

ENCODER_CHECK_FILE = "encoder_check.json"


@dataclass(frozen=True)
class SectionRetrieval:
    """Top-1 retrieval of repeated sections: `accuracy` with its 95% Wilson `interval` over
    `queries`, `chance` (1 / `candidates`) and `untrained` (the same check with the encoder's
    architecture freshly initialised, seed 0)."""

    accuracy: float
    interval: tuple[float, float]
    chance: float
    untrained: float
    queries: int
    candidates: int


def _rows(source: PieceSource, settings: SequenceSettings, max_pieces: int):
    """(piece, letter, row, is_repeat) for each section occurrence of the first pieces."""
    neutral = source.layout.section_id["A"]
    for piece in range(min(len(source), max_pieces)):
        ids = source.split.tokens(piece)
        seen = set()
        for letter, start, end in source.sections(piece, ids):
            opening = ids[start : min(end, start + settings.snippet_len)]
            yield piece, letter, np.concatenate([[neutral], opening]), letter in seen
            seen.add(letter)


@torch.no_grad()
def _pooled(encoder: SnippetEncoder, rows: list[np.ndarray], pad_id: int) -> torch.Tensor:
    """Unit-length pooled embeddings [N, D] of `rows`, 64 at a time."""
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(rows), 64):
        tokens = pad_sequences(rows[start : start + 64], pad_id)
        mask = tokens != pad_id
        _, pooled = encoder(tokens.to(device), mask.to(device))
        out.append(F.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


def _hits(encoder, queries, candidates, pad_id) -> np.ndarray:
    """Whether each query's nearest candidate is its own piece's same letter."""
    similarity = (
        _pooled(encoder, [q[2] for q in queries], pad_id)
        @ _pooled(encoder, [c[2] for c in candidates], pad_id).T
    )
    nearest = similarity.argmax(dim=1).tolist()
    return np.array(
        [queries[i][:2] == candidates[j][:2] for i, j in enumerate(nearest)], dtype=bool
    )


def section_retrieval(
    encoder: SnippetEncoder,
    source: PieceSource,
    settings: SequenceSettings,
    max_pieces: int = 256,
    untrained: SnippetEncoder | None = None,
) -> SectionRetrieval | None:
    """The check over the first `max_pieces` pieces of `source` (held-out pieces), `encoder`
    and `untrained` (default: `encoder`'s architecture freshly initialised, seed 0) scored the
    same way; None when no piece repeats a letter (nothing to retrieve)."""
    rows = list(_rows(source, settings, max_pieces))
    queries = [row for row in rows if row[3]]
    candidates = [row for row in rows if not row[3]]
    if not queries:
        return None
    was_training = encoder.training
    encoder.eval()
    hits = _hits(encoder, queries, candidates, source.pad_id)
    encoder.train(was_training)
    if untrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            untrained = dataclasses.replace(encoder)
    untrained_hits = _hits(untrained.eval(), queries, candidates, source.pad_id)
    return SectionRetrieval(
        accuracy=float(hits.mean()),
        interval=wilson_interval(int(hits.sum()), len(hits)),
        chance=1 / len(candidates),
        untrained=float(untrained_hits.mean()),
        queries=len(queries),
        candidates=len(candidates),
    )


def write_encoder_check(result: SectionRetrieval | None, run_dir: Path, source: str) -> str:
    """`encoder_check.json` in `run_dir` (the check and where the encoder came from); returns
    the one line the run prints."""
    record = {"encoder": source, **(dataclasses.asdict(result) if result else {"queries": 0})}
    write_text_atomic(run_dir / ENCODER_CHECK_FILE, json.dumps(record, indent=2) + "\n")
    if result is None:
        return f"encoder check: no held-out piece repeats a section; nothing to retrieve ({source})"
    low, high = result.interval
    return (
        f"encoder check ({source}): repeated sections retrieved {result.accuracy:.3f} "
        f"[{low:.3f}, {high:.3f}] of {result.queries} among {result.candidates} held-out "
        f"sections; chance {result.chance:.3f}, untrained encoder {result.untrained:.3f}"
    )
