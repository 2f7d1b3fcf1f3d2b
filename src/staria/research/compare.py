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
kind-unigram anchor, the snippet information gain (`evaluation.snippet_gain`, paired over val
pieces and pooled over seeds), and, on samples prompted with held-out pieces' snippets and
either their own form or another one, the material judge's form match and letter accuracy,
copy fidelity of returning sections, the section similarity gap and the fraction ending with
`<E>`. Intervals are 95% bootstrap intervals resampling prompts (or val pieces), each with its
samples of every seed; every model's draws are the same (paired).

    python -m staria.research.compare                    # or: make experiment (CPU, ~20 min)
    python -m staria.research.compare --scale gpu --runs-dir runs/compare_gpu
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import hydra
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode

from staria.data.cache import CachedSplit
from staria.data.preprocess import find_index
from staria.evaluation.anchors import kind_unigram_loss
from staria.evaluation.copy_fidelity import chance_fidelities, return_fidelities
from staria.evaluation.material_judge import (
    fit_threshold,
    judge_form,
    letter_accuracy,
    shuffled_forms,
)
from staria.evaluation.notes import SectionedNotes, sectioned_notes
from staria.evaluation.samples import read_manifest
from staria.evaluation.snippet_gain import piece_region_sums, region_gains
from staria.evaluation.structure_metrics import section_similarities
from staria.generation.checkpoint import LoadedCheckpoint, load_checkpoint
from staria.generation.manifest import MANIFEST_FILE
from staria.models.xtransformers import vocabulary_parameter_count
from staria.paths import REPO_ROOT
from staria.research.phases import (
    PhaseInterrupted,
    last_checkpoint,
    phase_time,
    run_generate_phase,
    run_train_phase,
    train_config,
    val_curve,
)
from staria.research.recipe import Recipe, RecipeError, run_recipe
from staria.statistics import mean_interval, paired_mean_interval
from staria.tokenizer import FORMS, MusicTokenizerWithStyle, TokenTable
from staria.training.train import EXIT_INTERRUPTED, RunConfigChangedError

log = logging.getLogger(__name__)

MODELS = ("control", "baseline", "staria_scratch", "staria_staged")
CONDITIONED = MODELS[1:]
# tanh(1) = 0.76 of the cross-attention branch from the first step: a scratch model's gates
# would otherwise start closed over a random decoder (docs/experiment.md).
OPEN_GATE = 1.0
CONDITIONS = ("own_form", "other_form")
SAMPLE_METRICS = ("form_match", "letter_accuracy", "copy_fidelity", "similarity_gap", "eos")
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
    """One comparison: where runs and results go, seeds, prompts and sampling."""

    runs_dir: Path = REPO_ROOT / "runs" / "compare"
    results_dir: Path = REPO_ROOT / "results" / "compare"
    scale: str = "cpu"
    seeds: tuple[int, ...] = (0, 1, 2)
    # Held-out (test) pieces whose snippets prompt the samples, per condition and seed.
    num_prompts: int = 32
    temperature: float = 0.9
    top_p: float | None = 0.95
    # Longer than every piece of the data (demo_common: at most 384 tokens), so a sample can
    # be whole.
    max_length: int = 400
    resamples: int = 1000
    # Applied to every training phase, e.g. trainer.max_steps=50 or trainer=ddp.
    overrides: tuple[str, ...] = ()


@dataclass
class Measured:
    """A mean with its 95% interval (None: nothing to measure)."""

    mean: float | None
    interval: tuple[float, float] | None = None


@dataclass
class ModelRow:
    """One model over all seeds."""

    model: str
    params_vocabulary: int
    params_trunk: int
    flops_per_step: int
    steps: int
    train_wall_s: float | None
    train_cpu_s: float | None
    val_loss: Measured
    gain: dict[str, Measured]
    samples: dict[str, dict[str, Measured]]
    val_curves: list[list[tuple[int, float]]] = field(default_factory=list)


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


# --- data -------------------------------------------------------------------------------------


def data_splits(protocol: Protocol, overrides: Sequence[str]) -> dict[str, CachedSplit]:
    """The train, val and test splits every model of `protocol` trains on (the control's
    data settings; made and indexed first if missing)."""
    cfg = train_config(protocol.control, Path("unused"), overrides)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    found = find_index(datamodule.sources(), datamodule.cache_dir, datamodule.index_settings)
    return {name: CachedSplit(found.split_dirs[name]) for name in ("train", "val", "test")}


def pieces_of(split: CachedSplit, table: TokenTable) -> list[SectionedNotes]:
    """Every piece of `split` as notes in sections."""
    return [sectioned_notes(split.tokens(i), table) for i in range(len(split))]


def other_forms(forms: Sequence[str], seed: int = 0) -> list[str]:
    """For each form, a seeded random other one of `FORMS`: what the other-form samples ask."""
    rng = np.random.default_rng(seed)
    return [str(rng.choice([f for f in FORMS if f != form])) for form in forms]


# --- per-sample scores ------------------------------------------------------------------------


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
    the held-out pieces as samples are: the form against another piece's (forms shuffled
    among the pieces), letters and the similarity gap with each piece's letters shuffled
    among its sections, returns against another piece's first occurrence; `eos` is (the
    held-out pieces' fraction ending with `<E>`, that of a uniform guess over the data's ids
    for `max_length` tokens)."""
    forms = [piece.form for piece in held_out]
    ceiling = [piece_scores(piece, piece.form, threshold) for piece in held_out]
    shuffled = shuffled_forms(forms)
    chance = [
        piece_scores(piece, form, threshold) for piece, form in zip(held_out, shuffled, strict=True)
    ]
    rng = np.random.default_rng(0)
    permuted = [
        piece_scores(replace(p, letters=tuple(rng.permutation(p.letters))), p.form, threshold)
        for p in held_out
    ]

    def measured(rows: list[dict], key: str) -> Measured:
        return Measured(*paired_mean_interval(np.array([r[key] for r in rows]), resamples))

    levels = {"ceiling": {}, "chance": {}}
    for key in ("form_match", "letter_accuracy", "copy_fidelity", "similarity_gap"):
        levels["ceiling"][key] = measured(ceiling, key)
        levels["chance"][key] = measured(chance if key == "form_match" else permuted, key)
    levels["chance"]["copy_fidelity"] = Measured(*mean_interval(chance_fidelities(held_out)))
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
    batch = next(iter(datamodule.train_dataloader()))
    task = loaded.task.train()
    task.requires_grad_(True)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        task.step_loss(batch).loss.backward()
    task.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def sampling_overrides(settings: CompareSettings, forms: Sequence[str] | None) -> list[str]:
    prompts = settings.num_prompts
    overrides = [
        f"num_samples={prompts}",
        "batch_size=16",
        "prompt.split=test",
        f"prompt.pieces=[{','.join(str(i) for i in range(prompts))}]",
        f"sampling.temperature={settings.temperature}",
        f"sampling.top_p={'null' if settings.top_p is None else settings.top_p}",
        f"sampling.max_length={settings.max_length}",
    ]
    return overrides + ([f"prompt.forms=[{','.join(forms)}]"] if forms else [])


def measure_model(
    model: str,
    runs: list[list[Path]],
    settings: CompareSettings,
    asked_other: Sequence[str],
    table: TokenTable,
    threshold: float,
) -> ModelRow:
    """Train-side figures, val loss and gain pooled over seeds, samples generated and scored."""
    resamples = settings.resamples
    region_sums, scores = [], {condition: [] for condition in CONDITIONS}
    for seed_runs in runs:
        run_dir = seed_runs[-1]
        checkpoint = last_checkpoint(run_dir)
        loaded = load_checkpoint(checkpoint)
        datamodule = hydra.utils.instantiate(loaded.data_settings)
        datamodule.prepare_data()
        datamodule.setup("fit")
        region_sums.append(piece_region_sums(loaded.net, datamodule.datasets["val"])[1])
        for condition, forms in (("own_form", None), ("other_form", asked_other)):
            samples_dir = run_dir / "samples" / condition
            run_generate_phase(
                f"{model} {condition}", checkpoint, samples_dir, sampling_overrides(settings, forms)
            )
            scores[condition].append(sample_scores(samples_dir, table, threshold))
    pooled = np.sum(region_sums, axis=0)  # [pieces, regions, 3]
    gains = region_gains(pooled, resamples)
    per_piece_loss = np.stack([s[:, -1, 1] / s[:, -1, 0] for s in region_sums], axis=1)
    samples = {
        condition: {
            metric: Measured(
                *paired_mean_interval(
                    np.array([[row[metric] for row in seed] for seed in per_seed]).T, resamples
                )
            )
            for metric in SAMPLE_METRICS
        }
        for condition, per_seed in scores.items()
    }
    last = load_checkpoint(last_checkpoint(runs[0][-1]))
    vocabulary = vocabulary_parameter_count(last.net)
    total = sum(p.numel() for p in last.net.parameters())
    times = [phase_time(folder) for seed_runs in runs for folder in seed_runs]
    known = all(t is not None for t in times)
    curves = [val_curve(seed_runs[-1]) for seed_runs in runs]
    return ModelRow(
        model=model,
        params_vocabulary=vocabulary,
        params_trunk=total - vocabulary,
        flops_per_step=step_flops(last),
        steps=sum(run_steps(folder) for folder in runs[0]),
        train_wall_s=sum(t["wall_s"] for t in times) / len(runs) if known else None,
        train_cpu_s=sum(t["cpu_s"] for t in times) / len(runs) if known else None,
        val_loss=Measured(*paired_mean_interval(per_piece_loss, resamples)),
        gain={
            region: Measured(gains[region].gain, gains[region].interval)
            if gains[region]
            else Measured(None)
            for region in ("all", "returning")
        },
        samples=samples,
        val_curves=curves,
    )


def run_steps(run_dir: Path) -> int:
    """The optimizer steps a finished run took (its `finished.json`)."""
    return int(json.loads((Path(run_dir) / "finished.json").read_text())["global_step"])


# --- the whole comparison ---------------------------------------------------------------------


def run_comparison(settings: CompareSettings) -> Path:
    """Every phase in order (finished ones skipped); writes the tables, JSON and plots."""
    if settings.scale not in PROTOCOLS:
        raise CompareError(f"scale {settings.scale!r} is not one of {tuple(PROTOCOLS)}")
    commit = git_commit()  # the code the run starts with
    protocol, root = PROTOCOLS[settings.scale], Path(settings.runs_dir)
    splits = data_splits(protocol, settings.overrides)
    if len(splits["test"]) < settings.num_prompts:  # refused before anything trains
        raise CompareError(
            f"--num-prompts {settings.num_prompts}: the test split holds {len(splits['test'])} "
            "pieces"
        )
    per_seed = [
        train_seed(protocol, root / f"seed-{seed}", seed, settings.overrides)
        for seed in settings.seeds
    ]
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)

    def bodies(name: str):
        return (splits[name].tokens(i) for i in range(len(splits[name])))

    anchor = kind_unigram_loss(bodies("train"), bodies("val"), table, tokenizer.bos_id)
    used_ids = len(np.unique(np.concatenate(list(bodies("train")))))
    threshold = fit_threshold(pieces_of(splits["val"], table))
    # the prompts' own pieces, cut where a sample is cut: what a perfect model's samples are
    prompt_ids = [
        splits["test"].tokens(i)[: settings.max_length] for i in range(settings.num_prompts)
    ]
    held_out = [sectioned_notes(ids, table) for ids in prompt_ids]
    eos = (
        float(np.mean([tokenizer.eos_id in ids for ids in prompt_ids])),
        1 - (1 - 1 / used_ids) ** settings.max_length,
    )
    levels = reference_levels(held_out, threshold, eos, settings.resamples)
    asked_other = other_forms([piece.form for piece in held_out])
    rows = [
        measure_model(
            model,
            [seed[model] for seed in per_seed],
            settings,
            asked_other,
            table,
            threshold,
        )
        for model in MODELS
    ]
    reference = {
        "kind_unigram_anchor": anchor,
        "uniform_loss": math.log(used_ids),
        "ids_in_train": used_ids,
        "judge_threshold": threshold,
        **levels,
    }
    return write_results(settings, rows, reference, commit)


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


def markdown_tables(rows: Sequence[ModelRow], reference: dict, settings: CompareSettings) -> str:
    seeds = len(settings.seeds)
    cost = [
        "| model | params: embeddings + head | params: trunk | FLOPs / step | steps "
        "| train wall s (mean of seeds) | train CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cost += [
        f"| {r.model} | {_num(r.params_vocabulary)} | {_num(r.params_trunk)} | "
        f"{r.flops_per_step / 1e9:.2f} G | {r.steps} | {_num(r.train_wall_s, 0)} | "
        f"{_num(r.train_cpu_s, 0)} |"
        for r in rows
    ]
    loss = [
        "| model | val loss (nats / token) | snippet gain: all tokens | snippet gain: returning |",
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
    return (
        f"## Cost ({seeds} seeds)\n\n" + "\n".join(cost) + "\n\n"
        f"## Loss and snippet information gain (val pieces, {seeds} seeds pooled, 95% paired "
        "bootstrap intervals)\n\n" + "\n".join(loss) + "\n\n"
        f"## Samples ({settings.num_prompts} held-out prompts x {seeds} seeds per row, "
        f"material judge threshold {reference['judge_threshold']:.2f})\n\n"
        + "\n".join(samples)
        + "\n"
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
    axes.set_ylabel("validation loss (nats per token)")
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
    settings: CompareSettings, rows: Sequence[ModelRow], reference: dict, commit: str
) -> Path:
    out = Path(settings.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / f"{TABLE_NAME}.md"
    markdown.write_text(markdown_tables(rows, reference, settings))
    record = {
        "commit": commit,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "models": [asdict(row) for row in rows],
        "reference": {k: asdict(v) if isinstance(v, Measured) else v for k, v in reference.items()},
    }
    (out / f"{TABLE_NAME}.json").write_text(json.dumps(record, indent=1, default=asdict) + "\n")
    plot_val_loss(rows, reference["kind_unigram_anchor"], out / "val_loss.png")
    plot_samples(rows, reference, out / "samples.png")
    print(markdown.read_text())
    return markdown


def parse_args(argv: Sequence[str] | None = None) -> CompareSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = CompareSettings()
    parser.add_argument("--runs-dir", type=Path, default=defaults.runs_dir)
    parser.add_argument("--results-dir", type=Path, default=defaults.results_dir)
    parser.add_argument("--scale", choices=tuple(PROTOCOLS), default=defaults.scale)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--num-prompts", type=int, default=defaults.num_prompts)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--max-length", type=int, default=defaults.max_length)
    parser.add_argument("--resamples", type=int, default=defaults.resamples)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every training phase (key=value)"
    )
    args = parser.parse_args(argv)
    if args.num_prompts < 2 or args.resamples < 100:
        parser.error("--num-prompts must be at least 2 and --resamples at least 100")
    return CompareSettings(
        runs_dir=args.runs_dir,
        results_dir=args.results_dir,
        scale=args.scale,
        seeds=tuple(args.seeds),
        num_prompts=args.num_prompts,
        temperature=args.temperature,
        max_length=args.max_length,
        resamples=args.resamples,
        overrides=tuple(args.overrides),
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("STARIA_TORCH_THREADS", "1")))
    try:
        run_comparison(parse_args(argv))
    except PhaseInterrupted as stopped:
        print(f"staria compare: {stopped}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (CompareError, RecipeError, RunConfigChangedError) as error:
        print(f"staria compare: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
