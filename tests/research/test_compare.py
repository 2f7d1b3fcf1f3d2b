"""The comparison end to end on a few CPU steps: every model of every seed trained, sampled
and measured by the real phases; its figures checked against what they must be by
construction (the control ignores snippets, the trunks are equal, the prompts ask what the
table says) and against a rerun, which trains nothing and writes the same numbers."""

import json
import math

import pytest

from staria.evaluation.samples import read_manifest
from staria.generation.manifest import MANIFEST_FILE
from staria.research import compare
from staria.research.compare import (
    MODELS,
    CompareSettings,
    in_first_appearance_order,
    other_forms,
    run_comparison,
)
from staria.research.phases import PHASE_TIME_FILE
from staria.tokenizer import FORMS
from tests.research.tiny import TINY_TRAINING

pytestmark = pytest.mark.slow
SEEDS = (0, 1)
PROMPTS = 4


@pytest.fixture(scope="module")
def comparison(research_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(
        runs_dir=root / "runs",
        results_dir=root / "results",
        seeds=SEEDS,
        num_prompts=PROMPTS,
        max_length=64,
        resamples=100,
        overrides=(*TINY_TRAINING, "data.synthesis.pieces_per_form=16"),
    )
    table = run_comparison(settings)
    record = json.loads((settings.results_dir / "comparison.json").read_text())
    return settings, table, record


def models(record) -> dict:
    return {row["model"]: row for row in record["models"]}


def test_every_model_of_every_seed_was_trained_and_timed(comparison):
    settings, _, record = comparison
    assert list(models(record)) == list(MODELS)
    for seed in SEEDS:
        seed_dir = settings.runs_dir / f"seed-{seed}"
        for folder in ("encoder", "decoder", "stage-A", "stage-B", "stage-C", "baseline"):
            assert (seed_dir / folder / PHASE_TIME_FILE).is_file(), (seed, folder)
        assert (seed_dir / "staria_scratch" / "checkpoints" / "last.ckpt").is_file()
    rows = models(record)
    assert rows["staria_staged"]["steps"] == 5 * 3  # encoder, decoder, A, B, C
    assert rows["control"]["steps"] == rows["baseline"]["steps"] == 3
    assert all(row["train_cpu_s"] > 0 and row["flops_per_step"] > 0 for row in rows.values())


def test_the_control_ignores_snippets_so_its_gain_is_exactly_zero(comparison):
    gain = models(comparison[2])["control"]["gain"]
    assert gain["all"]["mean"] == 0.0
    assert gain["all"]["interval"] == [0.0, 0.0]


def test_the_generators_share_one_trunk_and_staria_adds_its_encoder_and_bridge(comparison):
    rows = models(comparison[2])
    assert rows["control"]["params_rest"] == rows["baseline"]["params_rest"]
    assert rows["staria_scratch"]["params_rest"] > rows["control"]["params_rest"]
    assert rows["staria_scratch"]["params_rest"] == rows["staria_staged"]["params_rest"]
    # the baseline reads its prompt inline: more tokens per step than the control
    assert rows["baseline"]["flops_per_step"] > rows["control"]["flops_per_step"]


def test_samples_ask_their_own_form_and_another_one_for_the_same_prompts(comparison):
    settings = comparison[0]
    for seed in SEEDS:
        run = settings.runs_dir / f"seed-{seed}" / "stage-C" / "samples"
        own = read_manifest(run / "own_form" / MANIFEST_FILE)
        other = read_manifest(run / "other_form" / MANIFEST_FILE)
        assert len(own) == len(other) == PROMPTS
        for mine, theirs in zip(own, other, strict=True):
            assert mine.prompt_ids == theirs.prompt_ids  # the same held-out piece's snippets
            assert mine.form != theirs.form and theirs.form in FORMS


def test_every_sample_metric_has_its_interval_ceiling_and_chance(comparison):
    _, table, record = comparison
    reference = record["reference"]
    for row in record["models"]:
        for condition in ("own_form", "other_form"):
            for metric in ("form_match", "eos"):
                measured = row["samples"][condition][metric]
                low, high = measured["interval"]
                assert low <= measured["mean"] <= high
    # (pieces cut at 64 tokens hold no return: no copy fidelity or similarity gap here)
    for metric in ("form_match", "letter_accuracy", "eos"):
        assert reference["ceiling"][metric]["mean"] is not None, metric
        assert reference["chance"][metric]["mean"] is not None, metric
    assert reference["ceiling"]["eos"]["mean"] < 1.0  # cut at 64 tokens: none ends
    assert reference["uniform_loss"] == pytest.approx(math.log(reference["ids_in_train"]))
    text = table.read_text()
    assert "kind-unigram anchor" in text and "ceiling: held-out pieces" in text
    assert (table.parent / "val_loss.png").stat().st_size > 0


def test_a_rerun_trains_nothing_and_writes_the_same_numbers(comparison, monkeypatch):
    settings, table, record = comparison

    def no_training(*args, **kwargs):
        raise AssertionError("a finished phase trained again")

    monkeypatch.setattr("staria.research.phases.train", no_training)
    again = run_comparison(settings)
    rerun = json.loads((settings.results_dir / "comparison.json").read_text())
    for first, second in zip(record["models"], rerun["models"], strict=True):
        for key in ("val_loss", "gain", "samples", "params_rest", "flops_per_step"):
            assert first[key] == second[key], (first["model"], key)
    assert record["against_baseline"] == rerun["against_baseline"]
    assert again.read_text() == table.read_text()


@pytest.mark.parametrize(
    ("argument", "named"),
    [
        (["--num-prompts", "1"], "--num-prompts"),
        (["--temperature", "5"], "--temperature=5.0: must be 0 (greedy) or lie in [0.1, 2.0]"),
        (["--top-p", "0"], "--top-p=0.0: must lie in (0, 1]"),
    ],
)
def test_settings_it_cannot_run_are_refused_by_name(tmp_path, capsys, argument, named):
    """Sampling ranges are generation's own (`SamplingSettings`), named as flags."""
    with pytest.raises(SystemExit) as stopped:
        compare.main([*argument, "--runs-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_greedy_sampling_is_accepted_as_generation_accepts_it():
    assert compare.parse_args(["--temperature", "0"]).temperature == 0


def test_more_prompts_than_test_pieces_are_refused_before_anything_trains(
    research_cache, tmp_path, capsys
):
    runs = tmp_path / "runs"
    overrides = [*TINY_TRAINING, "data.synthesis.pieces_per_form=16"]
    with pytest.raises(SystemExit) as stopped:
        compare.main(["--num-prompts", "500", "--runs-dir", str(runs), *overrides])
    assert stopped.value.code == 2
    assert "--num-prompts 500: the test split holds 16 pieces" in capsys.readouterr().err
    assert not runs.exists()


def test_the_staria_models_differences_from_the_baseline_are_paired(comparison):
    record = comparison[2]
    rows = models(record)
    for model in ("staria_scratch", "staria_staged"):
        difference = record["against_baseline"][model]
        expected = rows[model]["gain"]["all"]["mean"] - rows["baseline"]["gain"]["all"]["mean"]
        assert difference["gain_all"]["mean"] == pytest.approx(expected)
        low, high = difference["gain_all"]["interval"]
        assert low <= difference["gain_all"]["mean"] <= high
        assert difference["val_loss"]["mean"] == pytest.approx(
            rows[model]["val_loss"]["mean"] - rows["baseline"]["val_loss"]["mean"]
        )


def test_other_forms_are_trained_forms_never_the_pieces_own():
    forms = ["AB", "ABA", "AABB", "AB"] * 25
    trained = {"AB", "ABA", "AABB", "ABAC"}
    asked = other_forms(forms, trained)
    assert all(a != f and a in trained for a, f in zip(asked, forms, strict=True))
    assert asked == other_forms(forms, trained)  # seeded
    assert len(set(asked)) > 1


def test_shuffled_letters_are_renamed_as_a_form_is_written():
    assert in_first_appearance_order("BAA") == ("A", "B", "B")
    assert in_first_appearance_order("CABAC") == ("A", "B", "C", "B", "A")
    assert in_first_appearance_order("ABA") == ("A", "B", "A")
