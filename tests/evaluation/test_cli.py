"""`staria-eval` on a folder generated from a tiny real checkpoint, scored by a tiny real
classifier: metrics JSON, confusion PNGs, the report, its rebuild, and dataset statistics."""

import json
from pathlib import Path

import numpy as np
import pytest
from generation.runs import train_tiny_run
from hydra import compose, initialize_config_dir

from staria.data.datasets import PieceSource
from staria.data.preprocess import CachedSplit, TokenLayout
from staria.evaluation.cli import main
from staria.evaluation.notes import TokenKind, TokenTable
from staria.generation.generate import generate
from staria.paths import REPO_ROOT
from staria.tokenizer import FORMS, MusicTokenizerWithStyle


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_runs")
    staria = train_tiny_run(root, "smoke", "staria")
    classifier = train_tiny_run(root, "classifier", "classifier")
    gen_dir = root / "generated"
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "generate",
            [
                f"checkpoint={staria}",
                f"out_dir={gen_dir}",
                "num_samples=4",
                "device=cpu",
                "sampling.max_length=120",
                "sampling.top_k=50",
            ],
        )
    generate(cfg)
    (val,) = (root / "cache").glob("dataset_*_val")
    eval_dir = root / "evaluation"
    args = ["samples", str(gen_dir), "--reference", str(val), "--classifier", str(classifier)]
    assert main([*args, "--out", str(eval_dir), "--audio-seconds", "2"]) == 0
    return {"gen_dir": gen_dir, "eval_dir": eval_dir, "val": val, "root": root}


def test_samples_writes_structure_and_classifier_metrics(evaluated):
    eval_dir = evaluated["eval_dir"]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    structure = metrics["structure"]
    assert structure["num_samples"] == 4
    assert 0 <= structure["valid_midi_fraction"] <= 1
    assert structure["pitch_class_js"] is None or 0 <= structure["pitch_class_js"] <= 1
    for task in ("form", "style"):
        assert metrics[task]["num_scored"] == 4
        scores = json.loads((eval_dir / f"{task}_scores.json").read_text())
        assert np.array(scores["confusion"]).sum() == 4
        assert (eval_dir / f"{task}_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((eval_dir / "form_scores.json").read_text())["class_names"] == list(FORMS)
    page = (eval_dir / "report.html").read_text()
    assert page.count("<audio") + page.count("no audio") == 4
    assert "form confusion" in page and "structure/eos_fraction" in page


def test_report_rebuilds_the_page_from_the_evaluation_folder(evaluated):
    report = evaluated["eval_dir"] / "report.html"
    before = report.read_text()
    report.unlink()
    assert main(["report", str(evaluated["eval_dir"])]) == 0
    assert report.read_text() == before


def test_stats_puts_an_indexed_split_beside_a_generated_folder(evaluated, tmp_path):
    inputs = [str(evaluated["val"]), str(evaluated["gen_dir"])]
    assert main(["stats", *inputs, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "statistics.json").read_text())
    val_name, gen_name = evaluated["val"].name, evaluated["gen_dir"].name
    assert set(summary) == {val_name, gen_name}
    pieces = len(CachedSplit(evaluated["val"]))
    assert summary[val_name]["splits"]["all"]["pieces"] == pieces
    # Labels beside the indexed sources give the split and its form balance.
    assert sum(summary[val_name]["splits"]["all"]["forms"].values()) == pieces
    assert (tmp_path / "pitch.png").is_file()


def test_hidden_tokens_are_those_the_classification_data_drops():
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    # The ids the classification dataset removes do not depend on the split.
    source = PieceSource(split=None, layout=TokenLayout(tokenizer))
    hidden = table.ids_of(TokenKind.FORM, TokenKind.SECTION)
    assert sorted(hidden.tolist()) == sorted(source.structure_ids.tolist())
