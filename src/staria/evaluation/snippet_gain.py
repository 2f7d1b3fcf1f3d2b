"""The snippet information gain: how much a generative model's teacher-forced loss depends on
the snippets it is given, region by region.

Each held-out piece is scored twice on its own training sequence: with its own snippets and with
the snippets of another piece of the same form (the next one of that form in the split), so
both conditions ask for the same structure and only the material differs. The gain of a region
is the loss with the other piece's snippets minus the loss with the true ones, in nats per
token: zero for a model that ignores its snippets (an unconditional control), above zero for
one that uses them. Regions of the sequence (token positions of the piece's labelled sections):

- `in_snippet`: the opening of each letter's first occurrence that its snippet holds;
- `past_snippet`: the rest of that first occurrence;
- `returning`: every later occurrence of a letter (A's return in ABA);
- `section_token`: the section tokens; `end`: `<E>`; `all`: every token after the first.

    staria-eval gain runs/demo/stage-C/checkpoints/last.ckpt      # -> <run>/snippet_gain.json

Intervals are 95% paired bootstrap intervals over pieces (`resamples` draws, seeded).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from torch.nn import functional as F

from staria.data.collate import Collator
from staria.data.datasets import GenerativeDataset
from staria.generation.checkpoint import load_checkpoint

REGIONS = ("in_snippet", "past_snippet", "returning", "section_token", "end", "all")
GAIN_FILE = "snippet_gain.json"


class SnippetGainError(ValueError):
    """The checkpoint or split cannot be scored (not a generative model, no same-form pair)."""


@dataclass(frozen=True)
class RegionGain:
    """One region's mean losses (nats per token) with true and other snippets, their difference
    and its 95% paired bootstrap interval over pieces."""

    tokens: int
    loss_true: float
    loss_other: float
    gain: float
    interval: tuple[float, float]


def token_regions(dataset: GenerativeDataset, index: int) -> np.ndarray:
    """The region (index into `REGIONS`, -1 for none) of each token of piece `index`'s training
    sequence, the form and instrument prefix and `<S>` being in none."""
    source = dataset.source
    ids = source.split.tokens(index)
    region = np.full(len(ids), -1)
    snippet_len = dataset.settings.snippet_len
    seen = set()
    for letter, start, end in source.sections(index, ids):
        if letter in seen:
            region[start:end] = REGIONS.index("returning")
        else:
            region[start:end] = REGIONS.index("past_snippet")
            region[start : min(end, start + snippet_len)] = REGIONS.index("in_snippet")
        seen.add(letter)
    region[np.isin(ids, list(source.layout.section_id.values()))] = REGIONS.index("section_token")
    region[ids == source.eos_id] = REGIONS.index("end")
    return region[dataset.positions(index, ids)]


def same_form_donors(dataset: GenerativeDataset) -> dict[int, int]:
    """Piece -> the next piece of the same form in the split (cyclic); pieces whose form no
    other piece has are left out."""
    by_form = defaultdict(list)
    for index in range(len(dataset)):
        form = dataset.source.record(index).form
        if form:
            by_form[form].append(index)
    return {
        piece: group[(position + 1) % len(group)]
        for group in by_form.values()
        if len(group) > 1
        for position, piece in enumerate(group)
    }


@torch.no_grad()
def sequence_losses(net, batch: dict[str, torch.Tensor], model_kind: str) -> torch.Tensor:
    """Per-token loss [B, T] of each target token (position t predicted from the tokens before
    it; 0 where `loss_mask` is off), teacher-forced."""
    tokens, mask = batch["tokens"], batch["token_mask"]
    if model_kind == "staria":
        logits = net(batch["snippets"], batch["snippet_mask"], tokens, mask)
    else:
        logits = net(tokens, mask)
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none"
    )
    losses = F.pad(losses, (1, 0))
    return losses * batch["loss_mask"]


def _piece_losses(net, dataset, collate, index, donor) -> tuple[np.ndarray, np.ndarray]:
    """Piece `index`'s per-token losses of its sequence with its own and `donor`'s snippets."""
    items = [dataset.item(index), dataset.item(index, snippets_from=donor)]
    device = next(net.parameters()).device
    batch = {key: value.to(device) for key, value in collate(items).items()}
    losses = sequence_losses(net, batch, dataset.model_kind).cpu().numpy()
    length = len(dataset.positions(index))
    # each row's sequence ends its stream (after a baseline's prompt), before its padding
    ends = [len(item["tokens"]) for item in items]
    return losses[0][ends[0] - length : ends[0]], losses[1][ends[1] - length : ends[1]]


def piece_region_sums(net, dataset: GenerativeDataset) -> np.ndarray:
    """Per piece with a same-form donor (in index order) and region, (tokens, summed loss with
    true snippets, summed loss with the donor's): [pieces, len(REGIONS), 3]."""
    donors = same_form_donors(dataset)
    if not donors:
        raise SnippetGainError("no two pieces of the split share a form: no snippets to swap")
    collate = Collator(dataset.source.pad_id)
    pieces = sorted(donors)
    sums = np.zeros((len(pieces), len(REGIONS), 3))
    for row, index in enumerate(pieces):
        true, other = _piece_losses(net, dataset, collate, index, donors[index])
        region = token_regions(dataset, index)
        scored = np.zeros(len(region), dtype=bool)
        scored[1:] = True  # the first token is predicted from nothing (Staria) or the prompt
        for column, name in enumerate(REGIONS):
            where = scored & ((region == column) if name != "all" else True)
            sums[row, column] = where.sum(), true[where].sum(), other[where].sum()
    return sums


def _draws(pieces: int, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of piece rows [resamples, pieces]: the same for the same count and seed."""
    return np.random.default_rng(seed).integers(0, pieces, (resamples, pieces))


def _drawn_gains(sums: np.ndarray, draws: np.ndarray, column: int) -> np.ndarray:
    """The gain of region `column` in each draw [resamples] (NaN where a draw has no token)."""
    resampled = sums[draws, column]  # [resamples, pieces, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (resampled[..., 2].sum(1) - resampled[..., 1].sum(1)) / resampled[..., 0].sum(1)


def _gain(sums: np.ndarray, column: int) -> float:
    tokens, true, other = sums[:, column].sum(axis=0)
    return (other - true) / tokens


def region_gains(
    sums: np.ndarray, resamples: int = 1000, seed: int = 0
) -> dict[str, RegionGain | None]:
    """`RegionGain` per region from `piece_region_sums`' array [pieces, regions, 3] (summed
    over seeds, for runs scored on the same pieces): pieces are resampled, true and other
    snippets stay paired. None for a region without tokens."""
    draws = _draws(len(sums), resamples, seed)
    result = {}
    for column, name in enumerate(REGIONS):
        tokens, true, other = sums[:, column].sum(axis=0)
        if tokens == 0:
            result[name] = None
            continue
        low, high = np.nanpercentile(_drawn_gains(sums, draws, column), [2.5, 97.5])
        result[name] = RegionGain(
            int(tokens), true / tokens, other / tokens, (other - true) / tokens, (low, high)
        )
    return result


def gain_difference(
    sums: np.ndarray, reference: np.ndarray, region: str, resamples: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float]] | None:
    """The gain of `region` of one model's sums minus another's (both [pieces, regions, 3] on
    the same pieces), with its 95% bootstrap interval from the same draws of pieces for both
    (paired). None where either has no token in the region."""
    column = REGIONS.index(region)
    if sums[:, column, 0].sum() == 0 or reference[:, column, 0].sum() == 0:
        return None
    draws = _draws(len(sums), resamples, seed)
    differences = _drawn_gains(sums, draws, column) - _drawn_gains(reference, draws, column)
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return _gain(sums, column) - _gain(reference, column), (float(low), float(high))


def snippet_information_gain(
    net, dataset: GenerativeDataset, resamples: int = 1000, seed: int = 0
) -> dict[str, RegionGain | None]:
    """`RegionGain` per region over the pieces with a same-form donor (None: no token)."""
    return region_gains(piece_region_sums(net, dataset), resamples, seed)


def checkpoint_gain(
    checkpoint: str | Path,
    split: str = "val",
    resamples: int = 1000,
    out: Path | None = None,
    run_config: str | Path | None = None,
) -> Path:
    """The gain of a generative run's checkpoint on its own data's `split`, written as
    `snippet_gain.json` beside the checkpoint's run (or in `out`); `run_config` for a
    checkpoint moved out of its run folder."""
    loaded = load_checkpoint(checkpoint, run_config=run_config)
    datamodule = instantiate(loaded.data_settings)
    if datamodule.task != "generative":
        raise SnippetGainError(f"{checkpoint}: a {datamodule.task} run has no snippets to swap")
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "fit")
    dataset = datamodule.datasets[split]
    if len(dataset) == 0:
        raise SnippetGainError(f"{checkpoint}: its data's {split} split is empty")
    gains = snippet_information_gain(loaded.net, dataset, resamples)
    path = Path(out or loaded.run_dir) / GAIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": str(checkpoint),
        "split": split,
        "regions": {name: asdict(gain) if gain else None for name, gain in gains.items()},
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
