"""`staria-eval` on a folder generated from a tiny real checkpoint, scored by a tiny real
classifier: metrics JSON, confusion PNGs, the report, its rebuild, and dataset statistics."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from staria.data.cache import CachedSplit
from staria.data.datasets import PieceSource
from staria.data.sequences import TokenLayout
from staria.evaluation import cli
from staria.evaluation.cli import main
from staria.evaluation.notes import sectioned_notes
from staria.evaluation.snippet_gain import REGIONS
from staria.generation.generate import generate
from staria.generation.judge import FORM_JUDGE_MINIMUM, ClassifierJudge
from staria.tokenizer import FORMS, MusicTokenizerWithStyle, TokenKind, TokenTable
from tests.generation.runs import train_tiny_run
from tests.harness import compose_config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_runs")
    staria = train_tiny_run(root, "smoke", "staria")
    classifier = train_tiny_run(root, "classifier", "classifier")
    gen_dir = root / "generated"
    cfg = compose_config(
        "generate",
        f"checkpoint={staria}",
        f"out_dir={gen_dir}",
        "num_samples=4",
        "device=cpu",
        "sampling.max_length=120",
        "sampling.top_k=50",
    )
    generate(cfg)
    (val,) = (root / "cache").glob("dataset_*_val")
    eval_dir = root / "evaluation"
    args = ["samples", str(gen_dir), "--reference", str(val), "--classifier", str(classifier)]
    assert main([*args, "--out", str(eval_dir), "--audio-seconds", "2"]) == 0
    return {
        "gen_dir": gen_dir,
        "eval_dir": eval_dir,
        "val": val,
        "root": root,
        "staria": staria,
        "classifier": classifier,
    }


def test_samples_writes_structure_and_classifier_metrics(evaluated):
    eval_dir = evaluated["eval_dir"]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    structure = metrics["structure"]
    assert structure["num_samples"] == 4
    # recomputed here: the .mid files read by pretty_midi, JS distance written out by hand
    midis = [pretty_midi.PrettyMIDI(str(p)) for p in sorted(evaluated["gen_dir"].glob("*.mid"))]
    pitched = [[n for i in m.instruments if not i.is_drum for n in i.notes] for m in midis]
    assert structure["valid_midi_fraction"] == np.mean([len(notes) > 0 for notes in pitched])
    generated = np.bincount([n.pitch % 12 for notes in pitched for n in notes], minlength=12)
    table = TokenTable.from_tokenizer(MusicTokenizerWithStyle())
    split = CachedSplit(evaluated["val"])
    reference = sum(
        np.bincount(sectioned_notes(split.tokens(i), table).notes.pitch % 12, minlength=12)
        for i in range(len(split))
    )
    p, q = generated / generated.sum(), reference / reference.sum()
    m = (p + q) / 2
    kl = [np.sum(x[x > 0] * np.log2(x[x > 0] / m[x > 0])) for x in (p, q)]
    assert structure["pitch_class_js"] == pytest.approx(np.sqrt(sum(kl) / 2), abs=1e-9)
    # the one-step classifier cannot tell held-out forms apart: its form verdict is withheld
    judge = ClassifierJudge(evaluated["classifier"])
    held_out = [(split.tokens(i), split.pieces[i].form) for i in range(len(split))]
    predicted = judge.predict("form", [ids for ids, _ in held_out])
    accuracy = np.mean([p == f for p, (_, f) in zip(predicted, held_out, strict=True)])
    assert accuracy < FORM_JUDGE_MINIMUM
    assert metrics["form"]["held_out_accuracy"] == pytest.approx(accuracy)
    assert "withheld" in metrics["form"] and not (eval_dir / "form_scores.json").exists()
    assert metrics["style"]["num_scored"] == 4
    scores = json.loads((eval_dir / "style_scores.json").read_text())
    assert np.array(scores["confusion"]).sum() == 4
    assert (eval_dir / "style_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    judge = metrics["material_judge"]  # threshold from half the reference, ceiling the rest
    assert judge["reference_pieces"] == len(split) // 2
    assert 0.5 <= judge["threshold"] < 1 and judge["letter_accuracy_interval"] is not None
    copies = metrics["copy_fidelity"]  # synthetic returns replay their material exactly
    assert copies["ceiling"]["mean"] == 1.0 and copies["ceiling"]["returns"] > 0
    assert copies["chance"]["mean"] < 0.5
    page = (eval_dir / "report.html").read_text()
    assert page.count("<audio") + page.count("no audio") == 4
    assert "style confusion" in page and "<td>eos_fraction</td>" in page


def test_a_form_classifier_good_enough_on_held_out_pieces_is_reported(evaluated, monkeypatch):
    monkeypatch.setattr(cli, "FORM_JUDGE_MINIMUM", 0.0)  # what a trained judge passes
    out = evaluated["root"] / "reported"
    args = [str(evaluated["gen_dir"]), "--reference", str(evaluated["val"])]
    assert (
        main(["samples", *args, "--classifier", str(evaluated["classifier"]), "--out", str(out)])
        == 0
    )
    form = json.loads((out / "metrics.json").read_text())["form"]
    assert form["num_scored"] == 4 and "held_out_accuracy" in form
    assert json.loads((out / "form_scores.json").read_text())["class_names"] == list(FORMS)


def test_the_report_gives_provenance_reference_chance_and_links(evaluated):
    eval_dir = evaluated["eval_dir"]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["reference"]["eos_fraction"] == 1.0  # indexed pieces all end with <E>
    assert metrics["reference"]["form_match_fraction"] == 1.0  # their sections spell their form
    assert metrics["chance"]["form_match_fraction"] == pytest.approx(1 / len(FORMS))
    low, high = metrics["intervals"]["eos_fraction"]
    assert low <= metrics["structure"]["eos_fraction"] <= high
    page = (eval_dir / "report.html").read_text()
    title = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert title == "Staria evaluation: …/" + "/".join(evaluated["gen_dir"].parts[-3:])
    manifest = json.loads((evaluated["gen_dir"] / "manifest.json").read_text())
    assert manifest["provenance"]["commit"] in page
    assert "essentially untrained" in page  # one step of training
    for href in re.findall(r'<a href="([^"]+\.mid)">', page):
        assert (eval_dir / href).resolve().is_file()
    assert len(re.findall(r'<a href="([^"]+\.mid)">', page)) == 4
    checkpoint = re.search(r'<a href="([^"]+\.ckpt)">', page).group(1)
    assert (eval_dir / checkpoint).resolve() == Path(manifest["checkpoint"])


def test_compare_puts_two_evaluations_side_by_side(evaluated, tmp_path, capsys):
    other = tmp_path / "other"
    args = ["samples", str(evaluated["gen_dir"]), "--reference", str(evaluated["val"])]
    assert main([*args, "--out", str(other), "--audio-seconds", "1"]) == 0
    out = tmp_path / "compare"
    assert main(["compare", str(evaluated["eval_dir"]), str(other), "--out", str(out)]) == 0
    columns = json.loads((out / "compare.json").read_text())
    assert [c["metrics"]["structure"]["num_samples"] for c in columns] == [4, 4]
    page = (out / "compare.html").read_text()
    row = re.search(r"<tr><td>eos_fraction</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r'<td class="value">(.*?)</td>', row)
    assert len(cells) == 2 + 3  # two models, reference, chance, meaning
    assert cells[0] == cells[1]  # the same samples scored twice
    for href in re.findall(r'<a href="([^"]+report\.html)">', page):
        assert (out / href).resolve().is_file()
    refused = {
        "two or more": [str(other)],
        "given twice": [str(other), str(other)],
        "not an evaluation folder": [str(other), str(tmp_path)],
        "no such folder": [str(other), str(tmp_path / "absent")],
        "is a generated folder": [str(other), str(tmp_path / "gen")],
    }
    shutil.copytree(other, tmp_path / "gen" / "evaluation")
    for message, folders in refused.items():
        assert main(["compare", *folders, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, error


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
    hidden = np.asarray(tokenizer.structure_token_ids)
    assert sorted(hidden.tolist()) == sorted(source.structure_ids.tolist())
    assert sorted(hidden.tolist()) == sorted(table.ids_of(TokenKind.FORM, TokenKind.SECTION))


def test_a_checkpoint_that_is_not_a_classifier_is_refused_by_name(evaluated, tmp_path, capsys):
    args = ["samples", str(evaluated["gen_dir"]), "--classifier", str(evaluated["staria"])]
    assert main([*args, "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err
    assert f"--classifier {evaluated['staria']}: holds a StariaModel" in error


def test_wandb_evaluation_attaches_to_the_training_run(evaluated, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = evaluated["root"] / "runs" / "staria" / "stage-none"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    args = ["samples", str(evaluated["gen_dir"]), "--out", str(tmp_path / "e")]
    assert main([*args, "--audio-seconds", "1", "--wandb", "offline"]) == 0
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    assert folder.name.endswith(f"-{run_id}"), "the eval logs into the training run's W&B run"
    assert (folder / f"run-{run_id}.wandb").is_file()


def test_gain_writes_every_region_of_a_real_run_and_refuses_a_classifier(evaluated, capsys):
    out = evaluated["root"] / "gain"
    args = ["gain", str(evaluated["staria"]), "--resamples", "200", "--out", str(out)]
    assert main([*args, "--split", "train"]) == 0  # the tiny run holds one val piece per form
    record = json.loads((out / "snippet_gain.json").read_text())
    assert record["split"] == "train" and set(record["regions"]) == set(REGIONS)
    whole = record["regions"]["all"]
    assert whole["tokens"] > 0
    assert whole["gain"] == pytest.approx(whole["loss_other"] - whole["loss_true"])
    assert whole["interval"][0] <= whole["gain"] <= whole["interval"][1]
    assert main(args) == 2
    assert "no two pieces of the split share a form" in capsys.readouterr().err
    assert main(["gain", str(evaluated["classifier"])]) == 2
    assert "has no snippets to swap" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a bootstrap of 5 draws gives no 95% interval
        main(["gain", str(evaluated["staria"]), "--resamples", "5"])
    assert "at least 100 draws" in capsys.readouterr().err
