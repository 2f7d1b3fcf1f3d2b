"""The staged recipe end to end, resumable at any stage: contrastive pretraining of the snippet
encoder (NT-Xent), a decoder-only pretraining run (optional), then Staria's stages A, B and C,
each starting from the one before.

Stage A starts from the contrastive encoder (`init_encoder_from`, which first runs the encoder
check: `encoder_check.json`) and, given a decoder run, from its decoder (`init_decoder_from`);
B and C start from the previous stage's `last.ckpt` (`init_from`). Each phase has its folder
under `--runs-dir`; a finished phase is skipped and an interrupted one resumes, so the same
command continues an interrupted chain. At the end it prints each stage's validation loss, first
and last, against the kind-unigram anchor (`evaluation.anchors`) on the same validation pieces.

    python -m staria.research.recipe --encoder demo_encoder --decoder demo_unconditional \\
        --staria demo --runs-dir runs/demo                   # make demo runs this
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class

from staria.evaluation.anchors import split_anchor_loss
from staria.research.phases import (
    PhaseInterrupted,
    PhaseResult,
    data_splits,
    last_checkpoint,
    run_train_phase,
    train_config,
    val_curve,
)
from staria.training.stages import STAGES
from staria.training.train import EXIT_INTERRUPTED, RunConfigChangedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """The presets of the chain: `encoder` (a contrastive run), `decoder` (a decoder-only run of
    the Staria decoder's shape, best `model=unconditional`: the sequence alone, at the positions
    Staria's decoder reads it; or None: stage A starts from a random decoder) and `staria`
    (run once per stage, with `stage=A|B|C`)."""

    encoder: str
    decoder: str | None
    staria: str


# The training task each role's preset must train (its class's `data_task`/`data_layout`).
ROLES = {
    "encoder": ("contrastive", None),
    "decoder": ("generative", ("unconditional", "baseline")),
    "staria": ("generative", ("staria",)),
}


class RecipeError(ValueError):
    """A preset that does not exist or does not train what its role needs."""


def check_recipe(recipe: Recipe, overrides: Sequence[str] = ()) -> None:
    """Every preset composes (with `overrides`) and trains its role's kind of model, before
    any phase runs: `RecipeError` naming the role and preset otherwise."""
    for role, preset in (
        ("encoder", recipe.encoder),
        ("decoder", recipe.decoder),
        ("staria", recipe.staria),
    ):
        if preset is None:
            continue
        try:
            cfg = train_config(preset, Path("unused"), overrides)
        except Exception as error:  # Hydra's errors name the missing preset or key
            raise RecipeError(f"--{role} {preset}: {error}") from None
        task = get_class(cfg.model._target_)
        data_task, layouts = ROLES[role]
        if task.data_task != data_task or (layouts and task.data_layout not in layouts):
            raise RecipeError(
                f"--{role} {preset} trains {task.__name__}; the {role} role needs a "
                f"{data_task} model{' (' + ', '.join(layouts) + ')' if layouts else ''}"
            )


def run_recipe(
    recipe: Recipe, runs_dir: Path, overrides: Sequence[str] = ()
) -> dict[str, PhaseResult]:
    """Every phase of `recipe` in order under `runs_dir`; `overrides` apply to each phase.
    The presets are checked first (`check_recipe`); a finished phase trained with other
    settings is refused (`RunConfigChangedError`), an interrupted one resumes."""
    check_recipe(recipe, overrides)
    phases = {
        "encoder": run_train_phase("encoder", recipe.encoder, runs_dir / "encoder", overrides)
    }
    start = [f"init_encoder_from={last_checkpoint(phases['encoder'].folder)}"]
    if recipe.decoder:
        phases["decoder"] = run_train_phase(
            "decoder", recipe.decoder, runs_dir / "decoder", overrides
        )
        start.append(f"init_decoder_from={last_checkpoint(phases['decoder'].folder)}")
    for stage in STAGES:
        run_dir = runs_dir / f"stage-{stage}"
        phases[stage] = run_train_phase(
            f"stage {stage}", recipe.staria, run_dir, [f"stage={stage}", *start, *overrides]
        )
        start = [f"init_from={last_checkpoint(run_dir)}"]
    return phases


def anchor_loss(recipe: Recipe, runs_dir: Path, overrides: Sequence[str] = ()) -> float:
    """The kind-unigram anchor on the Staria runs' own data: fitted on train, scored on val."""
    cfg = train_config(recipe.staria, runs_dir / "stage-A", ["stage=A", *overrides])
    splits = data_splits(cfg.data)
    return split_anchor_loss(splits["train"], splits["val"])


def summary(phases: dict[str, PhaseResult], anchor: float) -> str:
    """Each phase's first and last validation loss; the next-token phases beside the anchor
    (the encoder's loss is NT-Xent, another quantity)."""
    lines = [f"validation loss, nats per token (kind-unigram anchor: {anchor:.2f})"]
    for name, phase in phases.items():
        losses = val_curve(phase.folder)
        if not losses:
            lines.append(f"  {name:8s} no CSV validation record in {phase.folder}")
            continue
        (first_step, first), (last_step, last) = losses[0], losses[-1]
        verdict = (
            "NT-Xent, not per token"
            if name == "encoder"
            else f"{'below' if last < anchor else 'above'} the anchor"
        )
        lines.append(
            f"  {name:8s} step {first_step:>5d}: {first:.2f} -> step {last_step:>5d}: "
            f"{last:.2f} ({verdict})"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m staria.research.recipe", description=__doc__)
    parser.add_argument("--encoder", default="demo_encoder", help="contrastive preset")
    parser.add_argument("--decoder", default="demo_unconditional", help="decoder preset; none")
    parser.add_argument("--staria", default="demo", help="Staria preset, run at stage A, B, C")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/recipe"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every phase")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("STARIA_TORCH_THREADS", "1")))
    args = parse_args(argv)
    decoder = None if args.decoder.lower() == "none" else args.decoder
    recipe = Recipe(args.encoder, decoder, args.staria)
    try:
        phases = run_recipe(recipe, args.runs_dir.resolve(), args.overrides)
    except PhaseInterrupted as stopped:
        print(f"staria recipe: {stopped}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (RecipeError, RunConfigChangedError) as error:
        print(f"staria recipe: {error}", file=sys.stderr)
        sys.exit(2)
    print(summary(phases, anchor_loss(recipe, args.runs_dir.resolve(), args.overrides)))


if __name__ == "__main__":
    main()
