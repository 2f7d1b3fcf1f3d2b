"""The experiment: does a model that reads section snippets use them?

Four generative models with the same decoder trunk, trained on the same synthetic pieces, over
several seeds (docs/experiment.md):

- `control`: the unconditional decoder (the sequence alone, no snippets);
- `baseline`: the decoder-only baseline, snippets inline as a prompt before the sequence;
- `staria_scratch`: Staria trained whole from random weights, cross-attention gates open
  (`model.net.decoder.gate_init=OPEN_GATE`);
- `staria_staged`: Staria by the staged recipe (`research.recipe`): contrastive encoder, the
  control's decoder, then stages A, B, C.

Each is measured with its chance and ceiling beside it: validation loss against the
kind-unigram anchor, the snippet information gain (`evaluation.snippet_gain`, pooled over
seeds), and, on samples prompted with held-out pieces' snippets and either their own form or
another one, the material judge's form match and letter accuracy, copy fidelity of returning
sections, the section similarity gap and the fraction ending with `<E>`. Intervals are 95%
bootstrap intervals resampling val pieces or prompts, each with its values of every seed; the
draws are the same for every model, so the Staria models' differences from the baseline get
paired intervals.

    python -m staria.research.compare                    # or: make experiment (CPU, ~20 min)
    python -m staria.research.compare --scale gpu        # the same protocol at full size
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.errors import HydraException
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from staria.evaluation.anchors import split_anchor_loss
from staria.evaluation.copy_fidelity import chance_fidelities_per_piece, return_fidelities
from staria.evaluation.material_judge import (
    fit_threshold,
    judge_form,
    letter_accuracy,
    shuffled_forms,
)
from staria.evaluation.notes import SectionedNotes, sectioned_notes
from staria.evaluation.samples import read_manifest
from staria.evaluation.snippet_gain import (
    SnippetGainError,
    gain_difference,
    piece_region_sums,
    region_gains,
)
from staria.evaluation.structure_metrics import section_similarities
from staria.generation.checkpoint import LoadedCheckpoint, load_checkpoint
from staria.generation.generate import resolve_device
from staria.generation.manifest import MANIFEST_FILE
from staria.generation.prompts import PromptError
from staria.generation.sampling import SamplingConfigError, SamplingSettings
from staria.models.xtransformers import vocabulary_parameter_count
from staria.paths import REPO_ROOT
from staria.research.phases import (
    PhaseError,
    PhaseInterrupted,
    data_splits,
    last_checkpoint,
    phase_time,
    run_generate_phase,
    run_train_phase,
    train_config,
    val_curve,
)
from staria.research.recipe import Recipe, RecipeError, check_recipe, run_recipe
from staria.statistics import paired_mean_interval
from staria.tokenizer import SECTION_LETTERS, MusicTokenizerWithStyle, TokenTable
from staria.training.resume import FINISHED_MARKER
from staria.training.train import EXIT_INTERRUPTED, RunConfigChangedError

log = logging.getLogger(__name__)

MODELS = ("control", "baseline", "staria_scratch", "staria_staged")
# The models set against the baseline with paired differences.
AGAINST_BASELINE = ("staria_scratch", "staria_staged")
# tanh(1) = 0.76 of the cross-attention branch from the first step: a scratch model's gates
# would otherwise start closed over a random decoder (docs/experiment.md).
OPEN_GATE = 1.0
CONDITIONS = ("own_form", "other_form")
SAMPLE_METRICS = ("form_match", "letter_accuracy", "copy_fidelity", "similarity_gap", "eos")
GAIN_REGIONS = ("all", "returning")
# Tokens of a labelled sample's start that are given, not sampled: prefix, form, <S>, <A_SECTION>.
GIVEN_START = 4
TABLE_NAME = "comparison"


class CompareError(ValueError):
    """Settings the comparison cannot run with; names the setting."""


@dataclass(frozen=True)
class Protocol:
    """The presets of one scale, one per role; every one trains on the same data."""

    encoder: str
    control: str
    baseline: str
    staria: str


PROTOCOLS = {
    "cpu": Protocol("demo_encoder", "demo_unconditional", "demo_baseline", "demo"),
    "gpu": Protocol(
        "compare_encoder_full",
        "compare_unconditional_full",
        "compare_baseline_full",
        "compare_staria_full",
    ),
}


@dataclass(frozen=True)
class CompareSettings:
    """One comparison: where runs and results go (default: by scale), seeds, prompts and
    sampling, and the device that samples and measures."""

    runs_dir: Path | None = None
    results_dir: Path | None = None
    scale: str = "cpu"
    seeds: tuple[int, ...] = (0, 1, 2)
    # Held-out (test) pieces whose snippets prompt the samples, per condition and seed.
    num_prompts: int = 32
    temperature: float = 0.9
    top_p: float | None = 0.95
    # None: the data's max_seq_len + 16, longer than every training sequence.
    max_length: int | None = None
    resamples: int = 1000
    device: str = "auto"
    # Applied to every training phase, e.g. trainer.max_steps=50 or trainer=ddp.
    overrides: tuple[str, ...] = ()

    @property
    def runs(self) -> Path:
        suffix = "" if self.scale == "cpu" else f"_{self.scale}"
        return Path(self.runs_dir or REPO_ROOT / "runs" / f"compare{suffix}")

    @property
    def results(self) -> Path:
        suffix = "" if self.scale == "cpu" else f"_{self.scale}"
        return Path(self.results_dir or REPO_ROOT / "results" / f"compare{suffix}")


@dataclass
class Measured:
    """A mean with its 95% interval (None: nothing to measure) and how many values it has."""

    mean: float | None
    interval: tuple[float, float] | None = None
    count: int | None = None

    @classmethod
    def of(cls, values: np.ndarray, resamples: int) -> Measured:
        """`paired_mean_interval` of `values` [units, repeats], NaN being no value."""
        mean, interval = paired_mean_interval(values, resamples)
        return cls(mean, interval, int(np.isfinite(np.asarray(values, dtype=float)).sum()))


@dataclass
class ModelRow:
    """One model over all seeds."""

    model: str
    params_vocabulary: int
    params_rest: int
    flops_per_step: int
    steps: int
    train_wall_s: float | None
    train_cpu_s: float | None
    val_loss: Measured
    gain: dict[str, Measured]
    samples: dict[str, dict[str, Measured]]
    val_curves: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class Units:
    """A model's per-unit values, the same units for every model: per val piece and seed
    `loss` [pieces, seeds] and the pooled gain `sums` [pieces, regions, 3]; per prompt and
    seed each sample metric, `samples[condition][metric]` [prompts, seeds]."""

    loss: np.ndarray
    sums: np.ndarray
    samples: dict[str, dict[str, np.ndarray]]


def git_commit() -> str:
    """HEAD, with `-dirty` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "HEAD")
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# --- training ---------------------------------------------------------------------------------


def train_seed(protocol: Protocol, seed_dir: Path, seed: int, overrides: Sequence[str]):
    """Every model's runs for one seed under `seed_dir`: {model: [run folders it took]}, the
    last folder holding its final checkpoint (the staged model lists each phase)."""
    common = [f"seed={seed}", *overrides]
    recipe = Recipe(protocol.encoder, protocol.control, protocol.staria)
    phases = run_recipe(recipe, seed_dir, common)
    run_train_phase(f"seed {seed} baseline", protocol.baseline, seed_dir / "baseline", common)
    scratch = ["stage=none", f"model.net.decoder.gate_init={OPEN_GATE}", *common]
    run_train_phase(
        f"seed {seed} staria_scratch", protocol.staria, seed_dir / "staria_scratch", scratch
    )
    return {
        "control": [phases["decoder"].folder],
        "baseline": [seed_dir / "baseline"],
        "staria_scratch": [seed_dir / "staria_scratch"],
        "staria_staged": [phases[name].folder for name in ("encoder", "decoder", "A", "B", "C")],
    }


def run_steps(run_dir: Path) -> int:
    """The optimizer steps a finished run took (its finished marker)."""
    return int(json.loads((Path(run_dir) / FINISHED_MARKER).read_text())["global_step"])


# --- per-piece scores, chance and ceiling -----------------------------------------------------


def other_forms(forms: Sequence[str], choices: Sequence[str], seed: int = 0) -> list[str]:
    """For each form, a seeded random other one of `choices` (the forms the models trained on):
    what the other-form samples ask for."""
    rng = np.random.default_rng(seed)
    return [str(rng.choice([f for f in sorted(choices) if f != form])) for form in forms]


def in_first_appearance_order(letters: Sequence[str]) -> tuple[str, ...]:
    """`letters` renamed A, B, C, ... in order of first appearance (BAA -> ABB), as a form is
    written and the judge letters: a shuffled form that stays a well-formed one."""
    names: dict[str, str] = {}
    for letter in letters:
        names.setdefault(letter, SECTION_LETTERS[len(names)])
    return tuple(names[letter] for letter in letters)


def piece_scores(piece: SectionedNotes, asked: str, threshold: float) -> dict:
    """One piece's (or sample's) scores: the material judge's form against `asked` and its
    letters against the piece's own section tokens, the mean copy fidelity of its returns and
    its similarity gap (NaN: none)."""
    fidelities = return_fidelities(piece)
    same, different = section_similarities(piece)
    gap = same.mean() - different.mean() if len(same) and len(different) else math.nan
    return {
        "form_match": float(judge_form(piece, threshold).form == asked),
        "letter_accuracy": letter_accuracy(piece, threshold),
        "copy_fidelity": float(np.mean(fidelities)) if fidelities else math.nan,
        "similarity_gap": float(gap),
    }


def reference_levels(
    held_out: Sequence[SectionedNotes],
    threshold: float,
    eos: tuple[float, float],
    resamples: int,
) -> dict[str, dict[str, Measured]]:
    """Ceiling (the held-out pieces themselves) and chance of every sample metric, measured on
    the held-out pieces per piece, as samples are per sample: the form against another
    piece's (forms shuffled among the pieces); letters and the similarity gap with each
    piece's letters shuffled among its sections (renamed in order of first appearance);
    returns against the same letter of the next piece; `eos` is (the held-out pieces'
    fraction ending with `<E>`, that of a uniform guess over the data's ids)."""
    ceiling = [piece_scores(piece, piece.form, threshold) for piece in held_out]
    shuffled = shuffled_forms([piece.form for piece in held_out])
    chance = [
        piece_scores(piece, form, threshold) for piece, form in zip(held_out, shuffled, strict=True)
    ]
    rng = np.random.default_rng(0)
    permuted = [
        piece_scores(
            replace(p, letters=in_first_appearance_order(rng.permutation(p.letters))),
            p.form,
            threshold,
        )
        for p in held_out
    ]
    cross = [
        float(np.mean(scores)) if scores else math.nan
        for scores in chance_fidelities_per_piece(held_out)
    ]

    def measured(rows: list[dict], key: str) -> Measured:
        return Measured.of(np.array([row[key] for row in rows]), resamples)

    levels = {"ceiling": {}, "chance": {}}
    for key in ("form_match", "letter_accuracy", "copy_fidelity", "similarity_gap"):
        levels["ceiling"][key] = measured(ceiling, key)
        levels["chance"][key] = measured(chance if key == "form_match" else permuted, key)
    levels["chance"]["copy_fidelity"] = Measured.of(np.array(cross), resamples)
    levels["ceiling"]["eos"], levels["chance"]["eos"] = Measured(eos[0]), Measured(eos[1])
    return levels


def sample_scores(samples_dir: Path, table: TokenTable, threshold: float) -> list[dict]:
    """Per sample (manifest order), `piece_scores` against the form it was asked for, and
    whether it ended with `<E>`."""
    rows = []
    for sample in read_manifest(samples_dir / MANIFEST_FILE):
        scores = piece_scores(sectioned_notes(sample.token_ids, table), sample.form, threshold)
        rows.append({**scores, "eos": float(sample.ended_with_eos)})
    return rows


# --- per-model measurements -------------------------------------------------------------------


def step_flops(loaded: LoadedCheckpoint) -> int:
    """FLOPs of one training step's forward and backward (every parameter trainable), on the
    first batch of the run's own train loader (torch's FlopCounterMode: matmuls and
    attention)."""
    datamodule = hydra.utils.instantiate(loaded.data_settings)
    datamodule.prepare_data()
    datamodule.setup("fit")
    device = next(loaded.net.parameters()).device
    batch = {k: v.to(device) for k, v in next(iter(datamodule.train_dataloader())).items()}
    task = loaded.task.train()
    task.requires_grad_(True)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        task.step_loss(batch).loss.backward()
    task.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def sampling_overrides(
    settings: CompareSettings, max_length: int, forms: Sequence[str] | None
) -> list[str]:
    prompts = settings.num_prompts
    overrides = [
        f"num_samples={prompts}",
        "batch_size=16",
        f"device={settings.device}",
        "prompt.split=test",
        f"prompt.pieces=[{','.join(str(i) for i in range(prompts))}]",
        f"sampling.temperature={settings.temperature}",
        f"sampling.top_p={'null' if settings.top_p is None else settings.top_p}",
        f"sampling.max_length={max_length}",
    ]
    return overrides + ([f"prompt.forms=[{','.join(forms)}]"] if forms else [])


def measure_model(
    model: str,
    runs: list[list[Path]],
    settings: CompareSettings,
    sampling: dict[str, list[str]],
    table: TokenTable,
    threshold: float,
) -> tuple[ModelRow, Units]:
    """Train-side figures, val loss and gain pooled over seeds, samples generated (with
    `sampling[condition]` overrides) and scored."""
    resamples = settings.resamples
    device = resolve_device(settings.device)
    region_sums, scores = [], {condition: [] for condition in CONDITIONS}
    for seed_runs in runs:
        run_dir = seed_runs[-1]
        checkpoint = last_checkpoint(run_dir)
        loaded = load_checkpoint(checkpoint, device)
        datamodule = hydra.utils.instantiate(loaded.data_settings)
        datamodule.prepare_data()
        datamodule.setup("fit")
        region_sums.append(piece_region_sums(loaded.net, datamodule.datasets["val"]))
        for condition, overrides in sampling.items():
            samples_dir = run_dir / "samples" / condition
            run_generate_phase(f"{model} {condition}", checkpoint, samples_dir, overrides)
            scores[condition].append(sample_scores(samples_dir, table, threshold))
    pooled = np.sum(region_sums, axis=0)  # [pieces, regions, 3]
    gains = region_gains(pooled, resamples)
    loss = np.stack([s[:, -1, 1] / s[:, -1, 0] for s in region_sums], axis=1)
    values = {
        condition: {
            metric: np.array([[row[metric] for row in seed] for seed in per_seed]).T
            for metric in SAMPLE_METRICS
        }
        for condition, per_seed in scores.items()
    }
    last = load_checkpoint(last_checkpoint(runs[0][-1]), device)
    vocabulary = vocabulary_parameter_count(last.net)
    times = [phase_time(folder) for seed_runs in runs for folder in seed_runs]
    known = all(t is not None for t in times)
    row = ModelRow(
        model=model,
        params_vocabulary=vocabulary,
        params_rest=sum(p.numel() for p in last.net.parameters()) - vocabulary,
        flops_per_step=step_flops(last),
        steps=sum(run_steps(folder) for folder in runs[0]),
        train_wall_s=sum(t["wall_s"] for t in times) / len(runs) if known else None,
        train_cpu_s=sum(t["cpu_s"] for t in times) / len(runs) if known else None,
        val_loss=Measured.of(loss, resamples),
        gain={
            region: Measured(gains[region].gain, gains[region].interval, gains[region].tokens)
            if gains[region]
            else Measured(None)
            for region in GAIN_REGIONS
        },
        samples={
            condition: {metric: Measured.of(v, resamples) for metric, v in metrics.items()}
            for condition, metrics in values.items()
        },
        val_curves=[val_curve(seed_runs[-1]) for seed_runs in runs],
    )
    return row, Units(loss, pooled, values)


def against_baseline(units: dict[str, Units], resamples: int) -> dict[str, dict[str, Measured]]:
    """Each of `AGAINST_BASELINE` minus the baseline, with paired intervals: val loss and gain
    over the same val pieces, own-form sample metrics over the same prompts (same draws)."""
    base = units["baseline"]
    result = {}
    for model in AGAINST_BASELINE:
        mine = units[model]
        row = {"val_loss": Measured.of(mine.loss - base.loss, resamples)}
        for region in GAIN_REGIONS:
            found = gain_difference(mine.sums, base.sums, region, resamples)
            row[f"gain_{region}"] = Measured(*found) if found else Measured(None)
        for metric in SAMPLE_METRICS:
            difference = mine.samples["own_form"][metric] - base.samples["own_form"][metric]
            row[metric] = Measured.of(difference, resamples)
        result[model] = row
    return result


# --- the whole comparison ---------------------------------------------------------------------


def prepare(settings: CompareSettings) -> tuple[Protocol, DictConfig]:
    """The scale's protocol and the data settings of its runs, every preset checked first
    (`RecipeError`, `CompareError` naming what is wrong) so nothing trains on bad settings."""
    if settings.scale not in PROTOCOLS:
        raise CompareError(f"--scale {settings.scale!r} is not one of {tuple(PROTOCOLS)}")
    protocol = PROTOCOLS[settings.scale]
    check_recipe(Recipe(protocol.encoder, protocol.control, protocol.staria), settings.overrides)
    try:
        data = train_config(protocol.baseline, Path("unused"), settings.overrides).data
    except HydraException as error:
        raise CompareError(f"--scale {settings.scale} baseline: {error}") from None
    return protocol, data


def run_comparison(settings: CompareSettings) -> Path:
    """Every phase in order (finished ones skipped); writes the tables, JSON and plots."""
    protocol, data = prepare(settings)
    commit = git_commit()  # the code the run starts with
    splits = data_splits(data)
    if len(splits["test"]) < settings.num_prompts:  # refused before anything trains
        raise CompareError(
            f"--num-prompts {settings.num_prompts}: the test split holds {len(splits['test'])} "
            "pieces"
        )
    max_length = settings.max_length or data.max_seq_len + 16
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    train_forms = {splits["train"].pieces[i].form for i in range(len(splits["train"]))}
    threshold = fit_threshold([sectioned_notes(ids, table) for ids in pieces(splits["val"])])
    # the prompts' own pieces, cut where a sample is cut: what a perfect model's samples are
    prompt_ids = [ids[:max_length] for ids in pieces(splits["test"])][: settings.num_prompts]
    held_out = [sectioned_notes(ids, table) for ids in prompt_ids]
    used_ids = len(np.unique(np.concatenate(list(pieces(splits["train"])))))
    eos = (
        float(np.mean([tokenizer.eos_id in ids for ids in prompt_ids])),
        1 - (1 - 1 / used_ids) ** (max_length - GIVEN_START),
    )
    asked_other = other_forms([piece.form for piece in held_out], train_forms)
    sampling = {
        "own_form": sampling_overrides(settings, max_length, None),
        "other_form": sampling_overrides(settings, max_length, asked_other),
    }
    per_seed = [
        train_seed(protocol, settings.runs / f"seed-{seed}", seed, settings.overrides)
        for seed in settings.seeds
    ]
    measured = {
        model: measure_model(
            model, [seed[model] for seed in per_seed], settings, sampling, table, threshold
        )
        for model in MODELS
    }
    reference = {
        "kind_unigram_anchor": split_anchor_loss(splits["train"], splits["val"]),
        "uniform_loss": math.log(used_ids),
        "ids_in_train": used_ids,
        "judge_threshold": threshold,
        "max_length": max_length,
        **reference_levels(held_out, threshold, eos, settings.resamples),
    }
    rows = [row for row, _ in measured.values()]
    differences = against_baseline(
        {model: units for model, (_, units) in measured.items()}, settings.resamples
    )
    return write_results(settings, rows, differences, reference, commit)


def pieces(split) -> list[np.ndarray]:
    """Every piece's token ids of a split, in order."""
    return [split.tokens(i) for i in range(len(split))]


# --- output -----------------------------------------------------------------------------------


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _cell(measured: Measured, digits: int = 3) -> str:
    if measured.mean is None:
        return "–"
    if measured.interval is None:
        return _num(measured.mean, digits)
    low, high = measured.interval
    return f"{_num(measured.mean, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def markdown_tables(
    rows: Sequence[ModelRow],
    differences: dict[str, dict[str, Measured]],
    reference: dict,
    settings: CompareSettings,
) -> str:
    seeds = len(settings.seeds)
    cost = [
        "| model | params: embeddings + head | params: the rest (trunk; Staria: + encoder, "
        "bridge) | FLOPs / step | steps | train wall s (mean of seeds) | train CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cost += [
        f"| {r.model} | {_num(r.params_vocabulary)} | {_num(r.params_rest)} | "
        f"{r.flops_per_step / 1e9:.2f} G | {r.steps} | {_num(r.train_wall_s, 0)} | "
        f"{_num(r.train_cpu_s, 0)} |"
        for r in rows
    ]
    loss = [
        "| model | val loss (nats / token, mean of pieces) | snippet gain: all tokens "
        "| snippet gain: returning |",
        "|---|---:|---:|---:|",
    ]
    loss += [
        f"| {r.model} | {_cell(r.val_loss)} | {_cell(r.gain['all'], 4)} | "
        f"{_cell(r.gain['returning'], 4)} |"
        for r in rows
    ]
    loss += [
        f"| chance: kind-unigram anchor | {_num(reference['kind_unigram_anchor'])} | 0 | 0 |",
        f"| chance: uniform over the {reference['ids_in_train']} ids of the data | "
        f"{_num(reference['uniform_loss'])} | | |",
    ]
    header = "| model | prompt | " + " | ".join(SAMPLE_METRICS) + " |"
    samples = [header, "|---|---|" + "---:|" * len(SAMPLE_METRICS)]
    for r in rows:
        for condition in CONDITIONS:
            cells = " | ".join(_cell(r.samples[condition][m]) for m in SAMPLE_METRICS)
            samples.append(f"| {r.model} | {condition.replace('_', ' ')} | {cells} |")
    for level in ("ceiling", "chance"):
        cells = " | ".join(_cell(reference[level][m]) for m in SAMPLE_METRICS)
        samples.append(f"| {level}: held-out pieces | | {cells} |")
    columns = ["val_loss", *(f"gain_{region}" for region in GAIN_REGIONS), *SAMPLE_METRICS]
    paired = ["| model - baseline | " + " | ".join(columns) + " |"]
    paired.append("|---|" + "---:|" * len(columns))
    for model, row in differences.items():
        paired.append(f"| {model} | " + " | ".join(_cell(row[c], 4) for c in columns) + " |")
    return (
        f"## Cost ({seeds} seeds)\n\n" + "\n".join(cost) + "\n\n"
        f"## Loss and snippet information gain (val pieces, {seeds} seeds pooled, 95% "
        "bootstrap intervals over pieces)\n\n" + "\n".join(loss) + "\n\n"
        f"## Samples ({settings.num_prompts} held-out prompts x {seeds} seeds per row, at most "
        f"{reference['max_length']} tokens, material judge threshold "
        f"{reference['judge_threshold']:.2f})\n\n" + "\n".join(samples) + "\n\n"
        "## Staria against the baseline (differences, paired by val piece or prompt; samples "
        "asked their own form)\n\n" + "\n".join(paired) + "\n"
    )


def plot_val_loss(rows: Sequence[ModelRow], anchor: float, path: Path) -> None:
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for index, row in enumerate(rows):
        for number, curve in enumerate(row.val_curves):
            if curve:
                steps, losses = zip(*curve, strict=True)
                label = row.model if number == 0 else None
                axes.plot(steps, losses, color=f"C{index}", marker="o", label=label, alpha=0.7)
    axes.axhline(anchor, color="black", linestyle="--", label="kind-unigram anchor")
    axes.set_xlabel("optimizer step (of the model's last phase)")
    axes.set_ylabel("val/loss as logged in training (nats per token)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def plot_samples(rows: Sequence[ModelRow], reference: dict, path: Path) -> None:
    figure = Figure(figsize=(9, 4), dpi=100)
    axes = figure.add_subplot()
    bars = [(f"{r.model} (own form)", r.samples["own_form"]) for r in rows]
    bars += [(level, reference[level]) for level in ("ceiling", "chance")]
    width = 0.8 / len(bars)
    positions = np.arange(len(SAMPLE_METRICS))
    for index, (label, metrics) in enumerate(bars):
        means = [metrics[m].mean if metrics[m].mean is not None else np.nan for m in SAMPLE_METRICS]
        errors = np.array(
            [
                (mean - metrics[m].interval[0], metrics[m].interval[1] - mean)
                if metrics[m].interval and not np.isnan(mean)
                else (0.0, 0.0)
                for m, mean in zip(SAMPLE_METRICS, means, strict=True)
            ]
        ).T
        axes.bar(positions + index * width, means, width, yerr=errors, label=label, capsize=2)
    axes.set_xticks(positions + width * (len(bars) - 1) / 2, SAMPLE_METRICS)
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_title("Samples prompted with held-out pieces (95% intervals)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def write_results(
    settings: CompareSettings,
    rows: Sequence[ModelRow],
    differences: dict[str, dict[str, Measured]],
    reference: dict,
    commit: str,
) -> Path:
    out = settings.results
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / f"{TABLE_NAME}.md"
    markdown.write_text(markdown_tables(rows, differences, reference, settings))
    record = {
        "commit": commit,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "models": [asdict(row) for row in rows],
        "against_baseline": differences,
        "reference": reference,
    }
    (out / f"{TABLE_NAME}.json").write_text(json.dumps(record, indent=1, default=asdict) + "\n")
    plot_val_loss(rows, reference["kind_unigram_anchor"], out / "val_loss.png")
    plot_samples(rows, reference, out / "samples.png")
    print(markdown.read_text())
    return markdown


def parse_args(argv: Sequence[str] | None = None) -> CompareSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = CompareSettings()
    parser.add_argument("--runs-dir", type=Path, help="default: runs/compare[_<scale>]")
    parser.add_argument("--results-dir", type=Path, help="default: results/compare[_<scale>]")
    parser.add_argument("--scale", choices=tuple(PROTOCOLS), default=defaults.scale)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--num-prompts", type=int, default=defaults.num_prompts)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--max-length", type=int, help="default: the data's max_seq_len + 16")
    parser.add_argument("--resamples", type=int, default=defaults.resamples)
    parser.add_argument("--device", default=defaults.device, help="samples and measures: cpu, cuda")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every training phase (key=value)"
    )
    args = parser.parse_args(argv)
    problems = {
        "--num-prompts must be at least 2": args.num_prompts < 2,
        "--resamples must be at least 100": args.resamples < 100,
        "--seeds must differ": len(set(args.seeds)) != len(args.seeds),
        "--max-length must be at least 8": args.max_length is not None and args.max_length < 8,
    }
    for problem, found in problems.items():
        if found:
            parser.error(problem)
    try:  # the ranges generation takes, checked where they are declared
        SamplingSettings(temperature=args.temperature, top_p=args.top_p)
    except SamplingConfigError as error:
        flag = "--" + error.key.removeprefix("sampling.").replace("_", "-")
        parser.error(flag + str(error).removeprefix(error.key))
    values = {setting.name: getattr(args, setting.name) for setting in fields(CompareSettings)}
    values.update(seeds=tuple(args.seeds), overrides=tuple(args.overrides))
    return CompareSettings(**values)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("STARIA_TORCH_THREADS", "1")))
    try:
        run_comparison(settings)
    except PhaseInterrupted as stopped:
        print(f"staria compare: {stopped}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (
        CompareError,
        RecipeError,
        RunConfigChangedError,
        PhaseError,
        PromptError,
        SamplingConfigError,
        SnippetGainError,
    ) as error:
        print(f"staria compare: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
