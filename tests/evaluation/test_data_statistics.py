import json

import numpy as np
import pytest

from staria.data.labels import PieceLabels, Section
from staria.data.synthetic import SynthesisConfig, synthesize
from staria.evaluation.cli import dataset_statistics
from staria.evaluation.data_statistics import (
    HISTOGRAM_EDGES,
    StatisticsPiece,
    compute_statistics,
    load_pieces,
    save_statistics,
)
from tests import aria_reference

# Four piano notes: onsets 0, 0, 500 and 5000 + 1000 ms (after one <T>).
TINY_PIECE = [
    ("prefix", "instrument", "piano"),
    "<S>",
    ("piano", 60, 80), ("onset", 0), ("dur", 500),
    ("piano", 64, 60), ("onset", 0), ("dur", 1000),
    ("piano", 67, 100), ("onset", 500), ("dur", 250),
    "<T>",
    ("piano", 72, 40), ("onset", 1000), ("dur", 1000),
    "<E>",
]  # fmt: skip


def _labels(form: str, split: str | None, genre: str | None = None) -> PieceLabels:
    sections = [Section(letter, float(i), float(i + 1)) for i, letter in enumerate(form)]
    style = {"composer": None, "form": None, "genre": genre} if genre else None
    return PieceLabels(form, sections, style, split=split)


def test_values_of_a_tiny_known_piece(tokenizer):
    stats = compute_statistics([StatisticsPiece("tiny", TINY_PIECE)], tokenizer).splits["all"]
    assert stats.pitch.tolist() == [60, 64, 67, 72]
    assert stats.velocity.tolist() == [80, 60, 100, 40]
    assert stats.duration_ms.tolist() == [500, 1000, 250, 1000]
    assert stats.inter_onset_ms.tolist() == [500, 5500]
    assert stats.note_density.tolist() == pytest.approx([4 / 7.0])
    assert stats.tokens_per_piece.tolist() == [len(TINY_PIECE)]
    summary = stats.summary()
    assert summary["pitch"]["mean"] == pytest.approx(65.75)
    assert summary["inter_onset_ms"]["median"] == pytest.approx(3000)
    assert sum(summary["velocity"]["histogram"]["counts"]) == 4


def test_ids_and_tokens_give_the_same_statistics(tokenizer):
    from_tokens = compute_statistics([StatisticsPiece("t", TINY_PIECE)], tokenizer).splits["all"]
    ids = np.array(tokenizer.encode(TINY_PIECE))
    from_ids = compute_statistics([StatisticsPiece("t", ids)], tokenizer).splits["all"]
    for quantity in HISTOGRAM_EDGES:
        assert (
            from_ids.distribution(quantity).tolist() == from_tokens.distribution(quantity).tolist()
        )


def test_splits_forms_and_styles_are_counted_per_split(tokenizer):
    pieces = [
        StatisticsPiece("a", TINY_PIECE, _labels("AB", "train", "jazz")),
        StatisticsPiece("b", TINY_PIECE, _labels("ABA", "train", "classical")),
        StatisticsPiece("c", TINY_PIECE, _labels("AB", "val", "jazz")),
        StatisticsPiece("d", TINY_PIECE),
    ]
    splits = compute_statistics(pieces, tokenizer).splits
    assert set(splits) == {"train", "val", "unsplit", "all"}
    assert splits["train"].forms == {"AB": 1, "ABA": 1}
    assert splits["all"].forms == {"AB": 2, "ABA": 1}
    assert splits["all"].styles["genre"] == {"jazz": 2, "classical": 1}
    assert splits["val"].pieces == 1
    assert len(splits["all"].pitch) == 16


def test_statistics_of_a_folder_match_the_synthesis_and_write_pngs(tmp_path):
    config = SynthesisConfig(
        pieces_per_form=2, forms=("AB", "ABA"), min_tokens=100, max_tokens=300, val_fraction=0.5
    )
    synthesize(config, tmp_path / "synthetic")
    summary_path = dataset_statistics([tmp_path / "synthetic"], tmp_path / "stats")
    summary = json.loads(summary_path.read_text())["synthetic"]
    assert summary["splits"]["all"]["forms"] == {"AB": 2, "ABA": 2}
    assert summary["splits"]["train"]["pieces"] == summary["splits"]["val"]["pieces"] == 2
    tokens = summary["splits"]["all"]["tokens_per_piece"]
    # The files hold the tokenizer's sequence; the labelled length adds form and section tokens.
    assert (
        tokens["min"] >= config.min_tokens - 1 - len("ABA") and tokens["max"] <= config.max_tokens
    )
    pngs = sorted(p.name for p in (tmp_path / "stats").glob("*.png"))
    assert "pitch.png" in pngs and "forms.png" in pngs and "style_genre.png" in pngs
    assert all((tmp_path / "stats" / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)


def test_comparison_overlays_sets_and_lists_unreadable_files(tmp_path, tokenizer):
    # miditok's test files: the shared folder's, else the two vendored (one Aria refuses).
    shared = aria_reference.is_shared()
    real, skipped = load_pieces(aria_reference.folder() / "miditok-tests", tokenizer)
    assert "empty.mid" in {name for name, _ in skipped}
    generated = [StatisticsPiece("tiny", TINY_PIECE)]
    sets = {
        "real": compute_statistics(real, tokenizer, skipped),
        "generated": compute_statistics(generated, tokenizer),
    }
    summary = json.loads(save_statistics(sets, tmp_path).read_text())
    assert set(summary) == {"real", "generated"}
    if shared:
        assert summary["real"]["splits"]["all"]["pieces"] == len(real) > 20
    else:
        assert summary["real"]["splits"]["all"]["pieces"] == len(real) == 1
    unreadable = {"empty.mid", "ValueError_Control168.mid"} if shared else {"empty.mid"}
    assert {entry["file"] for entry in summary["real"]["skipped"]} >= unreadable
    assert (tmp_path / "duration_ms.png").stat().st_size > 1000
