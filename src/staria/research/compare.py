"""The experiment: Staria (snippet-conditioned) against the decoder-only baseline.

Both generators have (nearly) the same parameter count and see the same pieces, crops, batches
and steps (`experiments/compare_*.yaml`). The table reports, per model: validation loss on the
sequence, the form accuracy of generated samples as judged by a form classifier trained on
synthetic pieces, whether the generated section tokens spell the requested form, and section
self-similarity (docs/evaluation.md). With `--real FOLDER`, the classifier first labels the real
MIDI (wake) and both generators are compared again on it. docs/experiment.md has the details.

    python -m staria.research.compare            # or: make experiment
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig

from staria.data.cache import CachedSplit
from staria.data.preprocess import find_index
from staria.evaluation.classifier_metrics import classify_samples
from staria.evaluation.notes import sectioned_notes
from staria.evaluation.samples import read_manifest
from staria.evaluation.structure_metrics import section_similarities, structure_metrics
from staria.generation.checkpoint import RUN_CONFIG, load_checkpoint, read_run_config
from staria.generation.judge import FORM_JUDGE_MINIMUM, ClassifierJudge
from staria.generation.manifest import MANIFEST_FILE
from staria.paths import REPO_ROOT
from staria.research.phases import (
    last_checkpoint,
    run_generate_phase,
    run_train_phase,
    train_config,
    val_curve,
)
from staria.research.wake_sleep import label_phase
from staria.tokenizer import FORMS, MusicTokenizerWithStyle, TokenTable
from staria.training.tasks.base import parameter_counts

log = logging.getLogger(__name__)

GENERATORS = {"staria": "compare_staria", "baseline": "compare_baseline"}
# Preset suffix per scale: tiny runs on a CPU in minutes; full is the staria_full size (GPUs).
SCALES = {"tiny": "", "full": "_full"}
CLASSIFIER_PRESET = "compare_classifier"
TABLE_NAME = "comparison"


@dataclass(frozen=True)
class CompareSettings:
    """One comparison run: where runs and results go, sampling, and optional real MIDI."""

    runs_dir: Path = REPO_ROOT / "runs" / "compare"
    results_dir: Path = REPO_ROOT / "results" / "compare"
    num_samples: int = 24
    temperature: float = 0.9
    top_p: float | None = 0.95
    max_length: int = 448
    scale: str = "tiny"
    # Applied to every training phase, e.g. trainer.max_steps=50 or trainer=ddp.
    overrides: tuple[str, ...] = ()
    real: tuple[str, ...] = ()
    # Real pieces have no label split; their hash-drawn val/test shares.
    real_split_fraction: float = 0.15


@dataclass
class ModelRow:
    """One line of the table: a generator trained on one dataset."""

    dataset: str
    model: str
    params: int
    steps: int
    sequence_tokens_seen: int
    input_tokens_seen: int
    val_loss: float | None
    form_accuracy: float | None
    form_match: float | None
    section_similarity_same: float | None
    section_similarity_different: float | None
    section_similarity_gap: float | None
    eos_fraction: float
    samples: int
    val_curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class ReferenceRow:
    """The held-out pieces themselves: what the judge scores on true forms, true similarity."""

    dataset: str
    pieces: int
    form_accuracy: float | None
    section_similarity_same: float | None
    section_similarity_different: float | None
    section_similarity_gap: float | None


def tokens_seen(preset: str, run_dir: Path, overrides: Sequence[str]) -> tuple[int, int, int]:
    """(steps, sequence tokens with loss, input tokens) of the run's training batches.

    Replays the data module's train loader epoch by epoch for `trainer.max_steps` batches, as
    the Trainer drew them, without touching the model.
    """
    cfg = train_config(preset, run_dir, overrides)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    steps, loss_tokens, input_tokens, epoch = 0, 0, 0, 0
    while steps < cfg.trainer.max_steps:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            loss_tokens += int(batch["loss_mask"][:, 1:].sum())
            input_tokens += int(batch["token_mask"].sum())
            if "snippet_mask" in batch:
                input_tokens += int(batch["snippet_mask"].sum())
            steps += 1
            if steps == cfg.trainer.max_steps:
                break
        epoch += 1
    return steps, loss_tokens, input_tokens


def held_out_sequences(run_dir: Path) -> tuple[list[np.ndarray], list[str | None]]:
    """Token ids and forms of the test split the run's data module indexed."""
    datamodule = hydra.utils.instantiate(saved_data_settings(run_dir))
    datamodule.prepare_data()  # reuses the run's cache; rebuilds it only if it was deleted
    found = find_index(datamodule.sources(), datamodule.cache_dir, datamodule.index_settings)
    split = CachedSplit(found.split_dirs["test"])
    return [split.tokens(i) for i in range(len(split))], [p.form for p in split.pieces]


def saved_data_settings(run_dir: Path) -> DictConfig:
    """The data settings a finished run saved in its resolved `config.yaml` (targets checked)."""
    return read_run_config(run_dir / RUN_CONFIG).data


def _pooled_similarities(sequences: Sequence[Sequence[int]], table: TokenTable):
    pairs = [section_similarities(sectioned_notes(ids, table)) for ids in sequences]
    same = np.concatenate([p[0] for p in pairs])
    different = np.concatenate([p[1] for p in pairs])
    mean_same = float(same.mean()) if len(same) else None
    mean_different = float(different.mean()) if len(different) else None
    gap = None if mean_same is None or mean_different is None else mean_same - mean_different
    return mean_same, mean_different, gap


def reference_row(dataset: str, run_dir: Path, judge: ClassifierJudge, table: TokenTable):
    sequences, forms = held_out_sequences(run_dir)
    predicted = judge.predict("form", sequences)
    known = [(p, f) for p, f in zip(predicted, forms, strict=True) if f is not None]
    accuracy = float(np.mean([p == f for p, f in known])) if known else None
    same, different, gap = _pooled_similarities(sequences, table)
    return ReferenceRow(dataset, len(sequences), accuracy, same, different, gap)


def evaluate_model(
    dataset: str,
    model: str,
    preset: str,
    run_dir: Path,
    samples_dir: Path,
    overrides: Sequence[str],
    judge: ClassifierJudge,
    table: TokenTable,
) -> ModelRow:
    samples = read_manifest(samples_dir / MANIFEST_FILE)
    sequences, _ = held_out_sequences(run_dir)
    reference = [sectioned_notes(ids, table).notes for ids in sequences]
    structure = structure_metrics(samples, table, reference)
    form = classify_samples(
        partial(judge.head_logits, "form"),
        samples,
        "form",
        FORMS,
        judge.pad_id,
        judge.hidden_ids,
        max_len=judge.max_len,
    )
    steps, loss_tokens, input_tokens = tokens_seen(preset, run_dir, overrides)
    params = parameter_counts(load_checkpoint(last_checkpoint(run_dir), "cpu").net)
    curve = val_curve(run_dir)
    return ModelRow(
        dataset=dataset,
        model=model,
        params=params["params/all/total"],
        steps=steps,
        sequence_tokens_seen=loss_tokens,
        input_tokens_seen=input_tokens,
        val_loss=curve[-1][1] if curve else None,
        form_accuracy=form.accuracy if form.num_scored else None,
        form_match=structure.form_match_fraction,
        section_similarity_same=structure.section_similarity_same,
        section_similarity_different=structure.section_similarity_different,
        section_similarity_gap=structure.section_similarity_gap,
        eos_fraction=structure.eos_fraction,
        samples=len(samples),
        val_curve=curve,
    )


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(rows: Sequence[ModelRow], references: Sequence[ReferenceRow]) -> str:
    header = (
        "| data | model | params | steps | sequence tokens seen | input tokens seen | val loss "
        "| form accuracy (classifier) | form match (section tokens) | similarity same "
        "| similarity different | similarity gap | ended with `<E>` |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.dataset} | {r.model} | {_fmt(r.params)} | {r.steps} | "
        f"{_fmt(r.sequence_tokens_seen)} | {_fmt(r.input_tokens_seen)} | {_fmt(r.val_loss)} | "
        f"{_fmt(r.form_accuracy)} | {_fmt(r.form_match)} | {_fmt(r.section_similarity_same)} | "
        f"{_fmt(r.section_similarity_different)} | {_fmt(r.section_similarity_gap)} | "
        f"{_fmt(r.eos_fraction)} |"
        for r in rows
    ]
    lines += [
        f"| {r.dataset} | held-out pieces ({r.pieces}) | | | | | | {_fmt(r.form_accuracy)} | "
        f"1.000 | {_fmt(r.section_similarity_same)} | {_fmt(r.section_similarity_different)} | "
        f"{_fmt(r.section_similarity_gap)} | |"
        for r in references
    ]
    return header + "\n".join(lines) + "\n"


def plot_val_loss(rows: Sequence[ModelRow], path: Path) -> None:
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for row in rows:
        if row.val_curve:
            steps, losses = zip(*row.val_curve, strict=True)
            axes.plot(steps, losses, marker="o", label=f"{row.model} ({row.dataset})")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("validation loss (nats per sequence token)")
    axes.set_title("Validation loss, equal parameters and tokens")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def plot_metrics(rows: Sequence[ModelRow], references: Sequence[ReferenceRow], path: Path) -> None:
    names = ("form accuracy", "form match", "similarity gap")
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    bars = [
        (f"{r.model} ({r.dataset})", (r.form_accuracy, r.form_match, r.section_similarity_gap))
        for r in rows
    ] + [
        (f"held-out ({r.dataset})", (r.form_accuracy, 1.0, r.section_similarity_gap))
        for r in references
    ]
    width = 0.8 / len(bars)
    positions = np.arange(len(names))
    for index, (label, values) in enumerate(bars):
        heights = [np.nan if v is None else v for v in values]
        axes.bar(positions + index * width, heights, width, label=label)
    axes.set_xticks(positions + width * (len(bars) - 1) / 2, names)
    axes.set_ylim(min(0.0, *(v for _, vs in bars for v in vs if v is not None)), 1.05)
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_title("Generated samples against their requested form")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def git_commit() -> str:
    """HEAD, with `-dirty` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "HEAD")
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def generator_presets(scale: str) -> dict[str, str]:
    """The experiment preset of each generator at `scale` (tiny or full)."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {tuple(SCALES)}")
    return {model: preset + SCALES[scale] for model, preset in GENERATORS.items()}


def run_comparison(settings: CompareSettings) -> Path:
    """Every phase in order (finished ones skipped); writes the table, JSON and plots."""
    commit = git_commit()  # the code the run starts with, not what HEAD is when it ends
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    root, overrides = Path(settings.runs_dir), list(settings.overrides)
    classifier = run_train_phase(
        "classifier", CLASSIFIER_PRESET, root / "classifier", overrides
    ).folder
    judge = ClassifierJudge(last_checkpoint(classifier), tokenizer=tokenizer)
    datasets = {"synthetic": []}
    if settings.real:
        wake_dir = label_phase(
            "label", last_checkpoint(classifier), settings.real, root / "wake_labels"
        ).folder
        share = settings.real_split_fraction
        datasets["real"] = [
            "data.mode=real",
            f"data.folders=[{wake_dir}]",
            "data.name=compare_wake",
            f"data.val_fraction={share}",
            f"data.test_fraction={share}",
        ]
    sampling = [
        f"num_samples={settings.num_samples}",
        "batch_size=8",
        "prompt.split=test",
        f"sampling.temperature={settings.temperature}",
        f"sampling.top_p={'null' if settings.top_p is None else settings.top_p}",
        f"sampling.max_length={settings.max_length}",
    ]
    rows, references = [], []
    for dataset, data_overrides in datasets.items():
        phase_overrides = [*data_overrides, *overrides]
        for model, preset in generator_presets(settings.scale).items():
            run_dir = root / dataset / model
            run_train_phase(f"{dataset}/{model}", preset, run_dir, phase_overrides)
            samples_dir = run_dir / "samples"
            run_generate_phase(
                f"{dataset}/{model}/samples", last_checkpoint(run_dir), samples_dir, sampling
            )
            rows.append(
                evaluate_model(
                    dataset, model, preset, run_dir, samples_dir, phase_overrides, judge, table
                )
            )
        references.append(reference_row(dataset, root / dataset / "staria", judge, table))
    for reference in references:  # a judge that fails the held-out pieces judges nothing
        if reference.form_accuracy is None or reference.form_accuracy < FORM_JUDGE_MINIMUM:
            for row in rows:
                if row.dataset == reference.dataset:
                    row.form_accuracy = None
    return write_results(settings, rows, references, commit)


def write_results(
    settings: CompareSettings,
    rows: Sequence[ModelRow],
    references: Sequence[ReferenceRow],
    commit: str,
) -> Path:
    out = Path(settings.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / f"{TABLE_NAME}.md"
    markdown.write_text(markdown_table(rows, references))
    record = {
        "commit": commit,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "models": [asdict(row) for row in rows],
        "references": [asdict(row) for row in references],
    }
    (out / f"{TABLE_NAME}.json").write_text(json.dumps(record, indent=1) + "\n")
    plot_val_loss(rows, out / "val_loss.png")
    plot_metrics(rows, references, out / "metrics.png")
    print(markdown.read_text())
    return markdown


def parse_args(argv: Sequence[str] | None = None) -> CompareSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=CompareSettings.runs_dir)
    parser.add_argument("--results-dir", type=Path, default=CompareSettings.results_dir)
    parser.add_argument("--scale", choices=tuple(SCALES), default=CompareSettings.scale)
    parser.add_argument("--num-samples", type=int, default=CompareSettings.num_samples)
    parser.add_argument("--temperature", type=float, default=CompareSettings.temperature)
    parser.add_argument("--max-length", type=int, default=CompareSettings.max_length)
    parser.add_argument(
        "--real", nargs="*", default=(), help="folders of real MIDI: add a wake-labelled dataset"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every training phase (key=value)"
    )
    args = parser.parse_args(argv)
    return CompareSettings(
        runs_dir=args.runs_dir,
        results_dir=args.results_dir,
        scale=args.scale,
        num_samples=args.num_samples,
        temperature=args.temperature,
        max_length=args.max_length,
        overrides=tuple(args.overrides),
        real=tuple(args.real),
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("STARIA_TORCH_THREADS", "1")))
    run_comparison(parse_args(argv))


if __name__ == "__main__":
    main()
