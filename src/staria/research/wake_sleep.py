"""Wake-sleep: a section classifier and a generator teaching each other structure.

- **sleep**: the classifier trains on pieces whose sections are known (synthetic pieces; in
  later rounds also the generator's own samples, labelled with the form they were asked for);
- **wake**: the frozen classifier labels real MIDI (`section_labelling`), and the generator
  (Staria or the decoder-only baseline) trains on the real pieces with those labels as snippet
  prompts and form tokens;
- **dream** (rounds after the first): the generator samples pieces for requested forms; those
  whose section tokens spell the requested form become sleep data for the next round.

Every phase is a config run through `staria-train`/`staria-generate` (`phases.py`) in its own
folder under `runs_dir`; finished phases are skipped, so the loop resumes where it stopped.
docs/wake-sleep.md has the commands.

    python -m staria.research.wake_sleep --real ../shared/midi --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from staria.data.datamodule import synthetic_pieces
from staria.data.labels import PieceLabels, Section, labels_path
from staria.data.synthetic import SynthesisConfig
from staria.evaluation.notes import sectioned_notes
from staria.evaluation.samples import read_manifest
from staria.generation.manifest import MANIFEST_FILE
from staria.generation.section_labelling import (
    LABELLING_REPORT,
    classifier_labeller,
)
from staria.paths import REPO_ROOT
from staria.research.phases import (
    PhaseResult,
    last_checkpoint,
    run_generate_phase,
    run_train_phase,
    train_config,
)
from staria.tokenizer import MusicTokenizerWithStyle, TokenTable

log = logging.getLogger(__name__)

SLEEP_PRESET = "wake_sleep_sleep"
WAKE_PRESETS = {"staria": "wake_sleep_wake", "baseline": "wake_sleep_wake_baseline"}
DREAM_REPORT = "dream.json"


def label_phase(
    name: str, classifier_checkpoint: Path, sources: Sequence[str | Path], out_dir: Path
) -> PhaseResult:
    """Wake labelling of `sources` into `out_dir`; skipped once its `labelling.json` exists."""
    out_dir = Path(out_dir)
    if (out_dir / LABELLING_REPORT).is_file():
        log.info("phase %s: %s is labelled, skipped", name, out_dir)
        return PhaseResult(name, out_dir, skipped=True)
    classifier_labeller(classifier_checkpoint).label_folder(sources, out_dir)
    return PhaseResult(name, out_dir, skipped=False)


def dream_labels(token_ids: Sequence[int], form: str, table: TokenTable) -> PieceLabels | None:
    """Labels of a generated sample from its own section tokens, or None when they do not spell
    the requested `form` (then the sample says nothing reliable about that form)."""
    piece = sectioned_notes(token_ids, table)
    if piece.form != form or len(piece.notes) == 0:
        return None
    onsets = piece.notes.start_ms / 1000.0
    sections = []
    for index, letter in enumerate(piece.letters):
        inside = onsets[piece.note_section == index]
        if len(inside) == 0:
            return None
        sections.append([letter, float(inside.min())])
    if any(b[1] <= a[1] for a, b in itertools.pairwise(sections)):
        return None
    sections[0][1] = 0.0
    end = float(piece.notes.end_ms.max() / 1000.0) + 1.0
    bounds = [s[1] for s in sections[1:]] + [end]
    return PieceLabels(
        form=form,
        sections=tuple(Section(s[0], s[1], e) for s, e in zip(sections, bounds, strict=True)),
        source="generated",
        split="train",
    )


def dream_phase(manifest: Path, out_dir: Path) -> Path:
    """Samples that kept their requested form, as labelled pieces in `out_dir` (+ `dream.json`)."""
    out_dir = Path(out_dir)
    if (out_dir / DREAM_REPORT).is_file():
        log.info("phase dream: %s exists, skipped", out_dir)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    table = TokenTable.from_tokenizer(MusicTokenizerWithStyle())
    kept = []
    for sample in read_manifest(manifest):
        labels = dream_labels(sample.token_ids, sample.form, table) if sample.form else None
        if labels is None:
            continue
        target = out_dir / f"{sample.name}.mid"
        target.write_bytes(sample.midi_path.read_bytes())
        labels.save(labels_path(target))
        kept.append({"file": target.name, "form": labels.form})
    (out_dir / DREAM_REPORT).write_text(json.dumps({"kept": kept}, indent=1) + "\n")
    log.info("dream: %d samples kept their form -> %s", len(kept), out_dir)
    return out_dir


@dataclass(frozen=True)
class WakeSleepSettings:
    real: tuple[str, ...]
    runs_dir: Path = REPO_ROOT / "runs" / "wake_sleep"
    generator: str = "staria"
    rounds: int = 1
    dream_samples: int = 16
    # Within the wake presets' decoder positions (512).
    dream_max_length: int = 448
    overrides: tuple[str, ...] = ()


def synthetic_folder(preset: str, run_dir: Path, overrides: Sequence[str]) -> Path:
    """The synthetic pieces the sleep preset trains on (synthesised once, cached)."""
    data = train_config(preset, run_dir, overrides).data
    return synthetic_pieces(SynthesisConfig(**data.synthesis), Path(data.cache_dir))


def run_wake_sleep(settings: WakeSleepSettings) -> list[PhaseResult]:
    """Sleep, wake (label, train) and, from round 2, dream then sleep on synthetic + dreams."""
    if settings.generator not in WAKE_PRESETS:
        raise ValueError(f"generator {settings.generator!r} is not one of {tuple(WAKE_PRESETS)}")
    root, overrides = Path(settings.runs_dir), list(settings.overrides)
    results: list[PhaseResult] = []
    dreams: list[Path] = []
    classifier: Path | None = None
    generator: Path | None = None
    for round_index in range(1, settings.rounds + 1):
        here = root / f"round-{round_index}"
        sleep_overrides = list(overrides)
        if dreams:
            folders = [synthetic_folder(SLEEP_PRESET, here / "sleep", overrides), *dreams]
            sleep_overrides += [
                "data.mode=real",
                f"++data.folders=[{','.join(map(str, folders))}]",
                f"data.name=sleep_round{round_index}",
            ]
        if classifier is not None:
            sleep_overrides.append(f"init_from={last_checkpoint(classifier)}")
        results.append(
            run_train_phase(
                f"round-{round_index}/sleep", SLEEP_PRESET, here / "sleep", sleep_overrides
            )
        )
        classifier = results[-1].folder
        results.append(
            label_phase(
                f"round-{round_index}/label",
                last_checkpoint(classifier),
                settings.real,
                here / "wake_labels",
            )
        )
        wake_dir = results[-1].folder
        wake_overrides = [f"data.folders=[{wake_dir}]", f"data.name=wake_round{round_index}"]
        if generator is not None:
            wake_overrides.append(f"init_from={last_checkpoint(generator)}")
        results.append(
            run_train_phase(
                f"round-{round_index}/wake",
                WAKE_PRESETS[settings.generator],
                here / "wake",
                [*wake_overrides, *overrides],
            )
        )
        generator = results[-1].folder
        if round_index < settings.rounds:
            samples = here / "dream_samples"
            results.append(
                run_generate_phase(
                    f"round-{round_index}/dream",
                    last_checkpoint(generator),
                    samples,
                    [
                        f"num_samples={settings.dream_samples}",
                        "prompt.split=train",
                        f"sampling.max_length={settings.dream_max_length}",
                    ],
                )
            )
            dreams.append(dream_phase(samples / MANIFEST_FILE, here / "dreams"))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Wake-sleep: label real MIDI, train on it.")
    parser.add_argument("--real", nargs="+", required=True, help="folders of real MIDI")
    parser.add_argument("--runs-dir", type=Path, default=WakeSleepSettings.runs_dir)
    parser.add_argument("--generator", choices=tuple(WAKE_PRESETS), default="staria")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dream-samples", type=int, default=WakeSleepSettings.dream_samples)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training phase")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("STARIA_TORCH_THREADS", "1")))
    results = run_wake_sleep(
        WakeSleepSettings(
            real=tuple(args.real),
            runs_dir=args.runs_dir,
            generator=args.generator,
            rounds=args.rounds,
            dream_samples=args.dream_samples,
            overrides=tuple(args.overrides),
        )
    )
    for result in results:
        print(f"{result.name}: {'skipped' if result.skipped else 'done'} -> {result.folder}")


if __name__ == "__main__":
    main()
