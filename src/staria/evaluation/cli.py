"""`staria-eval`: score a generated folder, describe datasets, rebuild a report.

    staria-eval samples GEN_DIR [--reference DATA] [--classifier CKPT] [--out DIR] [--wandb MODE]
    staria-eval stats INPUT... --out DIR
    staria-eval report EVAL_DIR

DATA and INPUT are folders of MIDI files (labels JSON beside them are read when present),
generated folders (MIDI plus manifest.json), or indexed split folders of `staria-data index`.
An evaluation folder holds `metrics.json`, `<task>_scores.json`, `<task>_confusion.png`,
`evaluation.json` (what was evaluated, so `report` can rebuild the page) and `report.html`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from staria.data.datasets import STYLE_VOCABULARIES
from staria.data.labels import PieceLabels, labels_path
from staria.data.preprocess import COMPLETE_MARKER, CachedSplit
from staria.evaluation.audio import PREVIEW_SECONDS
from staria.evaluation.classifier_metrics import TASKS, classify_samples, confusion_png, save_scores
from staria.evaluation.data_statistics import (
    DatasetStatistics,
    StatisticsPiece,
    compute_statistics,
    load_pieces,
    save_statistics,
)
from staria.evaluation.notes import TokenKind, TokenTable, sectioned_notes
from staria.evaluation.report import log_to_wandb, render_samples, write_report
from staria.evaluation.samples import GeneratedSample, read_manifest
from staria.evaluation.structure_metrics import structure_metrics
from staria.generation.checkpoint import LoadedCheckpoint, load_checkpoint
from staria.generation.manifest import MANIFEST_FILE
from staria.midi_io import NoteTable
from staria.models import SequenceClassifier
from staria.tokenizer import FORMS, MusicTokenizerWithStyle

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


def reference_notes(path: str | Path, table: TokenTable, tokenizer) -> list[NoteTable]:
    """Notes of every reference piece, read from token ids like the generated samples'."""
    pieces, _ = input_pieces(path, tokenizer)
    if not pieces:
        raise EvaluationInputError(f"reference {path} holds no readable MIDI pieces")
    return [sectioned_notes(piece.tokens, table).notes for piece in pieces]


def head_logits(
    net: SequenceClassifier, task: str, num_classes: int, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One head's logits; the style head is as wide as the largest style vocabulary, so only the
    classes of the run's style key are kept."""
    return getattr(net(tokens, mask), task)[:, :num_classes]


def classifier_input_len(loaded: LoadedCheckpoint) -> int:
    """Longest input a classifier run scores: what its data fed it, within its encoder's reach."""
    return min(int(loaded.data_settings.max_seq_len), loaded.net.encoder.net.max_seq_len)


def classifier_scores(
    checkpoint: str | Path,
    samples: Sequence[GeneratedSample],
    table: TokenTable,
    tokenizer: MusicTokenizerWithStyle,
    out_dir: Path,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Form and style scores of a `ClassifierTask` checkpoint; a task no sample asked for is
    skipped. Form and section tokens are hidden, as the classifier never saw them in training."""
    loaded = load_checkpoint(checkpoint)
    net = loaded.net
    if not isinstance(net, SequenceClassifier):
        raise EvaluationInputError(
            f"--classifier {checkpoint}: holds a {type(net).__name__}, not a SequenceClassifier"
        )
    data = loaded.data_settings
    class_names = {"form": FORMS, "style": STYLE_VOCABULARIES[data.style_key]}
    max_len = classifier_input_len(loaded)
    hidden = table.ids_of(TokenKind.FORM, TokenKind.SECTION)
    metrics: dict[str, Any] = {}
    figures: dict[str, bytes] = {}
    for task in TASKS:
        if all(getattr(sample, task) is None for sample in samples):
            continue
        names = class_names[task]
        scores = classify_samples(
            partial(head_logits, net, task, len(names)),
            samples,
            task,
            names,
            tokenizer.pad_id,
            hidden,
            max_len=max_len,
        )
        save_scores(scores, out_dir)
        metrics[task] = {
            "accuracy": scores.accuracy,
            "macro_f1": scores.macro_f1,
            "num_scored": scores.num_scored,
            "f1": scores.f1,
        }
        figures[f"{task} confusion"] = confusion_png(scores)
    return metrics, figures


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
    title = f"Staria evaluation: {settings['samples']}"
    report = write_report(eval_dir / REPORT_FILE, metrics, media, figures, title=title)
    if settings.get("wandb", "off") != "off":
        import wandb

        with wandb.init(
            project="staria", dir=str(eval_dir), mode=settings["wandb"], job_type="eval"
        ):
            log_to_wandb(metrics, media, figures)
    return report


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
    report's path."""
    gen_dir = Path(gen_dir)
    eval_dir = Path(out_dir) if out_dir else gen_dir / "evaluation"
    eval_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    samples = read_manifest(gen_dir / MANIFEST_FILE)
    notes = reference_notes(reference, table, tokenizer) if reference else ()
    metrics: dict[str, Any] = {"structure": structure_metrics(samples, table, notes).as_dict()}
    figures: dict[str, bytes] = {}
    if classifier:
        scores, figures = classifier_scores(classifier, samples, table, tokenizer, eval_dir)
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
    settings_file = eval_dir / EVALUATION_FILE
    if not settings_file.is_file():
        raise EvaluationInputError(f"{eval_dir} is not an evaluation folder: no {EVALUATION_FILE}")
    settings = json.loads(settings_file.read_text()) | {"wandb": "off"}
    metrics = json.loads((eval_dir / METRICS_FILE).read_text())
    figures = {
        f"{png.name.removesuffix(CONFUSION_SUFFIX)} confusion": png.read_bytes()
        for png in sorted(eval_dir.glob(f"*{CONFUSION_SUFFIX}"))
    }
    samples = read_manifest(Path(settings["samples"]) / MANIFEST_FILE)
    table = TokenTable.from_tokenizer(MusicTokenizerWithStyle())
    return render_report(eval_dir, samples, metrics, figures, settings, table)


def dataset_statistics(inputs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Statistics of each input, overlaid in the plots when several; returns the JSON path."""
    tokenizer = MusicTokenizerWithStyle()
    sets: dict[str, DatasetStatistics] = {}
    for path in map(Path, inputs):
        name = path.name if path.name not in sets else str(path)
        pieces, skipped = input_pieces(path, tokenizer)
        sets[name] = compute_statistics(pieces, tokenizer, skipped)
    return save_statistics(sets, out_dir)


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
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_grad_enabled(False)
    if args.command == "samples":
        path = evaluate_samples(
            args.gen_dir,
            args.out,
            args.reference,
            args.classifier,
            args.soundfont,
            args.audio_seconds,
            args.wandb,
        )
    elif args.command == "stats":
        path = dataset_statistics(args.inputs, args.out)
    else:
        path = rebuild_report(args.eval_dir)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
