"""`staria-eval`: score a generated folder, describe datasets, rebuild a report.

    staria-eval samples GEN_DIR [--reference DATA] [--classifier CKPT] [--out DIR] [--wandb MODE]
    staria-eval stats INPUT... --out DIR
    staria-eval report EVAL_DIR
    staria-eval compare EVAL_DIR EVAL_DIR... --out DIR

DATA and INPUT are folders of MIDI files (labels JSON beside them are read when present),
generated folders (MIDI plus manifest.json), or indexed split folders of `staria-data index`.
An evaluation folder holds `metrics.json`, `<task>_scores.json`, `<task>_confusion.png`,
`evaluation.json` (what was evaluated, so `report` can rebuild the page) and `report.html`.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from staria.data.cache import COMPLETE_MARKER, CachedSplit
from staria.data.labels import SPLITS, PieceLabels, labels_path
from staria.evaluation.audio import PREVIEW_SECONDS
from staria.evaluation.classifier_metrics import TASKS, classify_samples, confusion_png, save_scores
from staria.evaluation.copy_fidelity import copy_fidelity_metrics
from staria.evaluation.data_statistics import (
    DatasetStatistics,
    StatisticsPiece,
    compute_statistics,
    load_pieces,
    save_statistics,
)
from staria.evaluation.material_judge import material_judge_metrics
from staria.evaluation.notes import SectionedNotes, sectioned_notes
from staria.evaluation.report import log_to_wandb, render_samples, write_comparison, write_report
from staria.evaluation.samples import GeneratedSample, ManifestError, read_manifest
from staria.evaluation.snippet_gain import SnippetGainError, checkpoint_gain
from staria.evaluation.structure_metrics import (
    MEANINGS,
    chance_metrics,
    metric_intervals,
    reference_metrics,
    structure_metrics,
)
from staria.generation.checkpoint import CheckpointError
from staria.generation.judge import FORM_JUDGE_MINIMUM, ClassifierJudge, JudgeError
from staria.generation.manifest import MANIFEST_FILE
from staria.tokenizer import FORMS, MusicTokenizerWithStyle, TokenTable
from staria.training.resume import RESOLVED_CONFIG, load_stored_config, stored_wandb_run_id

METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"
CONFUSION_SUFFIX = "_confusion.png"


class EvaluationInputError(ValueError):
    """An input path that is neither MIDI, a generated folder nor an indexed split."""


def is_indexed_split(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "index.json").is_file()


def split_pieces(folder: Path) -> list[StatisticsPiece]:
    """An indexed split's pieces (their ids as stored); labels from the source's JSON if present."""
    split = CachedSplit(folder)
    pieces = []
    for index, record in enumerate(split.pieces):
        label_file = labels_path(record.path)
        labels = PieceLabels.load(label_file) if label_file.is_file() else None
        pieces.append(StatisticsPiece(record.path, split.tokens(index), labels))
    return pieces


def input_pieces(
    path: str | Path, tokenizer: MusicTokenizerWithStyle
) -> tuple[list[StatisticsPiece], list[tuple[str, str]]]:
    """Pieces (token ids, labels) of a MIDI folder, a generated folder or an indexed split."""
    path = Path(path)
    if not path.is_dir():
        raise EvaluationInputError(f"{path} is not a folder of MIDI files or an indexed split")
    if is_indexed_split(path):
        return split_pieces(path), []
    return load_pieces(path, tokenizer)


def reference_pieces(
    path: str | Path, table: TokenTable, tokenizer
) -> list[tuple[SectionedNotes, PieceLabels | None, np.ndarray]]:
    """Every reference piece decoded from token ids like the generated samples', with its
    labels (None where its tokens carry no sections) and its token ids."""
    pieces, _ = input_pieces(path, tokenizer)
    if not pieces:
        raise EvaluationInputError(f"reference {path} holds no readable MIDI pieces")
    return [(sectioned_notes(p.tokens, table), p.labels, np.asarray(p.tokens)) for p in pieces]


def classifier_scores(
    checkpoint: str | Path,
    samples: Sequence[GeneratedSample],
    out_dir: Path,
    held_out: Sequence[tuple[np.ndarray, str]] = (),
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Form and style scores of a `ClassifierTask` checkpoint; a task no sample asked for is
    skipped. Form and section tokens are hidden, as the classifier never saw them in training.
    Given `held_out` pieces (token ids, form), the form scores are withheld unless the
    classifier recovers at least `FORM_JUDGE_MINIMUM` of those forms: below it, its verdict on
    samples cannot tell a model that follows the form from one that does not."""
    try:
        judge = ClassifierJudge(checkpoint)
    except JudgeError as error:
        raise EvaluationInputError(f"--classifier {error}") from error
    metrics: dict[str, Any] = {}
    figures: dict[str, bytes] = {}
    checked: dict[str, float] = {}
    for task in TASKS:
        if all(getattr(sample, task) is None for sample in samples):
            continue
        if task == "form" and held_out:
            predicted = judge.predict("form", [ids for ids, _ in held_out])
            accuracy = float(
                np.mean([p == f for p, (_, f) in zip(predicted, held_out, strict=True)])
            )
            if accuracy < FORM_JUDGE_MINIMUM:
                metrics["form"] = {
                    "held_out_accuracy": accuracy,
                    "withheld": f"recovers {accuracy:.2f} < {FORM_JUDGE_MINIMUM} of held-out forms",
                }
                continue
            checked["held_out_accuracy"] = accuracy
        scores = classify_samples(
            partial(judge.head_logits, task),
            samples,
            task,
            judge.class_names[task],
            judge.pad_id,
            judge.hidden_ids,
            max_len=judge.max_len,
        )
        save_scores(scores, out_dir)
        metrics[task] = {
            "accuracy": scores.accuracy,
            "macro_f1": scores.macro_f1,
            "num_scored": scores.num_scored,
            "f1": scores.f1,
            **(checked if task == "form" else {}),
        }
        figures[f"{task} confusion"] = confusion_png(scores)
    return metrics, figures


def display_path(path: str | Path, short: bool = False) -> str:
    """`path` relative to the working folder when inside it; else as given, or with `short`
    its last three parts (`…/<run>/generated/<name>`)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(Path("…", *path.parts[-3:])) if short else str(path)


def report_provenance(manifest: dict, settings: dict[str, Any], eval_dir: Path) -> dict:
    """What made the samples, for the report: checkpoint (a link), step, validation loss
    beside the uniform guess, sampling and prompt settings, seed, code version, reference."""
    trained = manifest.get("provenance", {})
    config = manifest.get("config", {})
    checkpoint = Path(manifest.get("checkpoint", ""))
    href = os.path.relpath(checkpoint, eval_dir) if checkpoint.name else None
    loss, loss_step = trained.get("val_loss"), trained.get("val_loss_step")
    return {
        "checkpoint_html": f'<a href="{html.escape(href)}">{html.escape(display_path(checkpoint))}'
        "</a>"
        if href
        else "–",
        "model": trained.get("model"),
        "step": trained.get("step"),
        "val_loss": loss,
        "val_loss at step": loss_step,
        "uniform_loss": trained.get("uniform_loss"),
        "sampling": config.get("sampling"),
        "prompt": {
            k: v
            for k, v in (config.get("prompt") or {}).items()
            if k in ("source", "midi", "form", "structure", "continue_s", "windows", "labeller")
        },
        "seed": manifest.get("seed"),
        "samples": len(manifest.get("samples", [])),
        "commit": trained.get("commit"),
        "reference": display_path(settings["reference"]) if settings["reference"] else None,
        "classifier": display_path(settings["classifier"]) if settings["classifier"] else None,
    }


def render_report(
    eval_dir: Path,
    samples: Sequence[GeneratedSample],
    metrics: dict[str, Any],
    figures: dict[str, bytes],
    settings: dict[str, Any],
    table: TokenTable,
) -> Path:
    media = render_samples(
        samples, table, audio_seconds=settings["audio_seconds"], soundfont=settings["soundfont"]
    )
    gen_dir = Path(settings["samples"])
    manifest = json.loads((gen_dir / MANIFEST_FILE).read_text())
    links = {s.name: os.path.relpath(s.midi_path, eval_dir) for s in samples}
    report = write_report(
        eval_dir / REPORT_FILE,
        metrics,
        media,
        figures,
        title=f"Staria evaluation: {display_path(gen_dir, short=True)}",
        provenance=report_provenance(manifest, settings, eval_dir),
        sample_links=links,
        meanings=MEANINGS,
    )
    if settings.get("wandb", "off") != "off":
        import wandb

        run_dir = manifest.get("provenance", {}).get("run_dir")
        with wandb.init(mode=settings["wandb"], **wandb_run_of(run_dir, eval_dir)):
            log_to_wandb(metrics, media, figures)
    return report


def wandb_run_of(run_dir: str | None, eval_dir: Path) -> dict[str, Any]:
    """`wandb.init` arguments that attach an evaluation to the W&B run of the training run
    that made the samples (its stored id and project, in its folder); a new `eval` run in
    the evaluation folder when that run folder has no id."""
    run_id = stored_wandb_run_id(Path(run_dir)) if run_dir else None
    if run_id is None:
        return {"project": "staria", "dir": str(eval_dir), "job_type": "eval"}
    stored = load_stored_config(Path(run_dir) / RESOLVED_CONFIG) or {}
    project = ((stored.get("logger") or {}).get("wandb") or {}).get("project") or "staria"
    return {"project": project, "id": run_id, "resume": "allow", "dir": run_dir}


def evaluate_samples(
    gen_dir: str | Path,
    out_dir: str | Path | None = None,
    reference: str | Path | None = None,
    classifier: str | Path | None = None,
    soundfont: str | None = None,
    audio_seconds: float = PREVIEW_SECONDS,
    wandb_mode: str = "off",
) -> Path:
    """Metrics JSON, confusion PNGs and the HTML report of a generated folder; returns the
    report's path. The structure metrics come with 95% intervals, and, given a reference
    set, its own values (the ceiling) and chance (`structure_metrics`)."""
    gen_dir = Path(gen_dir)
    eval_dir = Path(out_dir) if out_dir else gen_dir / "evaluation"
    eval_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    samples = read_manifest(gen_dir / MANIFEST_FILE)
    refs = reference_pieces(reference, table, tokenizer) if reference else []
    notes = [piece.notes for piece, _, _ in refs]
    metrics: dict[str, Any] = {
        "structure": structure_metrics(samples, table, notes).as_dict(),
        "intervals": metric_intervals(samples, table),
        "chance": chance_metrics(notes, len(FORMS)),
    }
    if refs:
        forms = [labels.form if labels and p.letters else None for p, labels, _ in refs]
        metrics["reference"] = reference_metrics([p for p, _, _ in refs], forms)
        labelled = [piece for (piece, _, _), form in zip(refs, forms, strict=True) if form]
        pieces = [sectioned_notes(sample.token_ids, table) for sample in samples]
        judged = material_judge_metrics(pieces, [s.form for s in samples], labelled)
        if judged is not None:
            metrics["material_judge"] = judged
        metrics["copy_fidelity"] = copy_fidelity_metrics(pieces, [p for p, _, _ in refs])
    figures: dict[str, bytes] = {}
    if classifier:
        held_out = [(ids, labels.form) for _, labels, ids in refs if labels and labels.form]
        scores, figures = classifier_scores(classifier, samples, eval_dir, held_out)
        metrics.update(scores)
    (eval_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
    settings = {
        "samples": str(gen_dir.resolve()),
        "reference": str(Path(reference).resolve()) if reference else None,
        "classifier": str(Path(classifier).resolve()) if classifier else None,
        "soundfont": soundfont,
        "audio_seconds": audio_seconds,
        "wandb": wandb_mode,
    }
    (eval_dir / EVALUATION_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    return render_report(eval_dir, samples, metrics, figures, settings, table)


def rebuild_report(eval_dir: str | Path) -> Path:
    """Write `report.html` again from an evaluation folder's metrics, figures and samples."""
    eval_dir = Path(eval_dir)
    settings, metrics = read_evaluation(eval_dir)
    settings["wandb"] = "off"
    figures = {
        f"{png.name.removesuffix(CONFUSION_SUFFIX)} confusion": png.read_bytes()
        for png in sorted(eval_dir.glob(f"*{CONFUSION_SUFFIX}"))
    }
    samples = read_manifest(Path(settings["samples"]) / MANIFEST_FILE)
    table = TokenTable.from_tokenizer(MusicTokenizerWithStyle())
    return render_report(eval_dir, samples, metrics, figures, settings, table)


def read_evaluation(eval_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An evaluation folder's settings and metrics (`EvaluationInputError` naming the folder)."""
    settings_file = eval_dir / EVALUATION_FILE
    if not eval_dir.is_dir():
        raise EvaluationInputError(f"{eval_dir}: no such folder")
    if (eval_dir / "evaluation" / EVALUATION_FILE).is_file():
        raise EvaluationInputError(
            f"{eval_dir} is a generated folder; its evaluation is {eval_dir / 'evaluation'}"
        )
    if not settings_file.is_file() or not (eval_dir / METRICS_FILE).is_file():
        raise EvaluationInputError(
            f"{eval_dir} is not an evaluation folder: no {EVALUATION_FILE} and {METRICS_FILE} "
            "(write one with `staria-eval samples`)"
        )
    return json.loads(settings_file.read_text()), json.loads((eval_dir / METRICS_FILE).read_text())


def compare_evaluations(eval_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """`compare.html` and `compare.json` in `out_dir`: the structure metrics of two or more
    evaluations side by side (each column: its generated folder, model, step and validation
    loss, linked to its report), with the reference set's value, chance and meaning."""
    if len(eval_dirs) < 2:
        raise EvaluationInputError("compare needs two or more evaluation folders")
    if len({Path(d).resolve() for d in eval_dirs}) < len(eval_dirs):
        raise EvaluationInputError("compare: an evaluation folder is given twice")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationInputError(f"--out {out_dir} is a file, not a folder")
    columns = []
    for eval_dir in map(Path, eval_dirs):
        settings, metrics = read_evaluation(eval_dir)
        manifest = json.loads((Path(settings["samples"]) / MANIFEST_FILE).read_text())
        columns.append(
            {
                "evaluation": display_path(eval_dir),
                "report": os.path.relpath(eval_dir / REPORT_FILE, out_dir),
                "reference": settings["reference"],
                "provenance": manifest.get("provenance", {}),
                "sampling": manifest.get("config", {}).get("sampling"),
                "metrics": metrics,
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(columns, indent=1) + "\n")
    return write_comparison(out_dir / "compare.html", columns, MEANINGS)


def dataset_statistics(inputs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Statistics of each input, overlaid in the plots when several; returns the JSON path."""
    tokenizer = MusicTokenizerWithStyle()
    sets: dict[str, DatasetStatistics] = {}
    for path in map(Path, inputs):
        name = path.name if path.name not in sets else str(path)
        pieces, skipped = input_pieces(path, tokenizer)
        sets[name] = compute_statistics(pieces, tokenizer, skipped)
    return save_statistics(sets, out_dir)


def _resamples(text: str) -> int:
    """A bootstrap size: at least 100 draws, or a 95% interval means nothing."""
    value = int(text)
    if value < 100:
        raise argparse.ArgumentTypeError(f"{value}: at least 100 draws for a 95% interval")
    return value


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="staria-eval", description=__doc__.split("\n")[0])
    commands = main_parser.add_subparsers(dest="command", required=True)
    samples = commands.add_parser("samples", help="metrics and HTML report of a generated folder")
    samples.add_argument("gen_dir", help="folder staria-generate wrote (MIDI + manifest.json)")
    samples.add_argument("--reference", help="MIDI folder or indexed split for histogram distances")
    samples.add_argument("--classifier", help="checkpoint of a classification run (form/style)")
    samples.add_argument("--out", help="evaluation folder (default: GEN_DIR/evaluation)")
    samples.add_argument("--soundfont", help="render audio with fluidsynth and this .sf2")
    samples.add_argument("--audio-seconds", type=float, default=PREVIEW_SECONDS)
    samples.add_argument(
        "--wandb", choices=("off", "offline", "online"), default="off", help="log to W&B too"
    )
    stats = commands.add_parser("stats", help="dataset statistics, several inputs side by side")
    stats.add_argument("inputs", nargs="+", help="MIDI folders, generated folders, indexed splits")
    stats.add_argument("--out", required=True, help="folder for statistics.json and the plots")
    report = commands.add_parser("report", help="rebuild report.html of an evaluation folder")
    report.add_argument("eval_dir", help="folder `staria-eval samples` wrote")
    gain = commands.add_parser(
        "gain", help="snippet information gain of a generative checkpoint, region by region"
    )
    gain.add_argument("checkpoint", help="a staria or baseline run's checkpoint")
    gain.add_argument("--split", choices=SPLITS, default="val")
    gain.add_argument("--resamples", type=_resamples, default=1000, help="bootstrap draws (>= 100)")
    gain.add_argument(
        "--run-config", help="the run's config.yaml, for a checkpoint moved out of it"
    )
    gain.add_argument("--out", help="folder for snippet_gain.json (default: the run folder)")
    compare = commands.add_parser("compare", help="two or more evaluations side by side")
    compare.add_argument("eval_dirs", nargs="+", help="folders `staria-eval samples` wrote")
    compare.add_argument("--out", required=True, help="folder for compare.html and compare.json")
    return main_parser


def run(args: argparse.Namespace) -> Path:
    if args.command == "samples":
        return evaluate_samples(
            args.gen_dir,
            args.out,
            args.reference,
            args.classifier,
            args.soundfont,
            args.audio_seconds,
            args.wandb,
        )
    if args.command == "stats":
        return dataset_statistics(args.inputs, args.out)
    if args.command == "compare":
        return compare_evaluations(args.eval_dirs, args.out)
    if args.command == "gain":
        return checkpoint_gain(
            args.checkpoint, args.split, args.resamples, args.out, args.run_config
        )
    return rebuild_report(args.eval_dir)


# Errors in what the user gave: one line on stderr and exit status 2, no traceback.
INPUT_ERRORS = (EvaluationInputError, ManifestError, CheckpointError, SnippetGainError)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with torch.no_grad():  # not set_grad_enabled: a caller in the same process keeps grad
            path = run(args)
    except INPUT_ERRORS as error:
        print(f"staria-eval {args.command}: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
