"""`staria-generate`: load a checkpoint, build one prompt per sample, sample, write MIDI + manifest.

Prompts per model (sequence contract of docs/architecture.md): Staria reads the snippets through
its encoder and starts the decoder at `[instrument prefix, <FORM>, <S>, <A_SECTION>]`; the
decoder-only baseline reads `<PROMPT_START> snippets... <PROMPT_END>` and the same start; from
scratch either starts at `[piano prefix, <S>]` with no snippets.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from staria.data.cache import CachedSplit
from staria.data.datasets import SequenceSettings
from staria.data.preprocess import find_index
from staria.data.sequences import TokenLayout
from staria.generation.checkpoint import LoadedCheckpoint, load_checkpoint, training_provenance
from staria.generation.config import register_configs
from staria.generation.manifest import check_output_folder, write_samples
from staria.generation.prompts import (
    Labeller,
    Prompt,
    PromptError,
    conditioned_prompt,
    piece_from_midi,
    piece_from_split,
    scratch_prompt,
)
from staria.generation.sampling import SamplingConfigError, SamplingSettings, sample_pieces
from staria.generation.section_labelling import classifier_labeller
from staria.models import DecoderOnlyBaseline, StariaModel
from staria.paths import REPO_ROOT
from staria.tokenizer import MusicTokenizerWithStyle

log = logging.getLogger(__name__)
PROMPT_SOURCES = ("data", "midi", "scratch")

register_configs()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def data_split(loaded: LoadedCheckpoint, split: str) -> CachedSplit:
    """Split `split` of the data the checkpoint was trained on (indexed first if missing)."""
    datamodule = hydra.utils.instantiate(loaded.data_settings)
    datamodule.prepare_data()
    found = find_index(datamodule.sources(), datamodule.cache_dir, datamodule.index_settings)
    if found is None or split not in found.split_dirs:
        raise PromptError(f"no indexed split {split!r} for the data of {loaded.run_dir}")
    return CachedSplit(found.split_dirs[split])


def section_labeller(checkpoint: str) -> Labeller:
    """`prompt.labeller`: the wake-sleep section classifier as a file -> labels function."""
    return classifier_labeller(checkpoint).label


def conditioning_pieces(cfg: DictConfig, loaded: LoadedCheckpoint, layout: TokenLayout):
    """The pieces snippets are cut from, for `prompt.source` `midi` or `data`."""
    if cfg.prompt.source == "midi":
        if not cfg.prompt.midi:
            raise PromptError("prompt.source=midi needs prompt.midi=[file.mid, ...]")
        labeller = section_labeller(cfg.prompt.labeller) if cfg.prompt.labeller else None
        windows = OmegaConf.to_container(cfg.prompt.windows) if cfg.prompt.windows else None
        return [piece_from_midi(path, layout, windows, labeller) for path in cfg.prompt.midi]
    split = (
        CachedSplit(cfg.prompt.split_dir)
        if cfg.prompt.split_dir
        else data_split(loaded, cfg.prompt.split)
    )
    if len(split) == 0:
        raise PromptError(f"{split.folder}: the split holds no pieces to take snippets from")
    indices = cfg.prompt.pieces or range(min(cfg.num_samples, len(split)))
    return [piece_from_split(split, int(i), layout.tokenizer) for i in indices]


def target_forms(prompt: DictConfig, num_pieces: int) -> list[str | None]:
    """The form asked of each conditioning piece: `prompt.forms` in order, else `prompt.form`
    (None: the piece's own form). `PromptError` naming the key when both are set or the
    counts differ."""
    if prompt.forms is None:
        return [prompt.form] * num_pieces
    if prompt.form is not None:
        raise PromptError("prompt.form and prompt.forms are both set; give one of them")
    if len(prompt.forms) != num_pieces:
        raise PromptError(
            f"prompt.forms has {len(prompt.forms)} forms for {num_pieces} conditioning pieces "
            "(prompt.pieces or prompt.midi): give one per piece"
        )
    return list(prompt.forms)


def build_prompts(cfg: DictConfig, loaded: LoadedCheckpoint, layout: TokenLayout) -> list[Prompt]:
    """One prompt per sample; conditioning pieces are used in turn."""
    source = cfg.prompt.source
    if source not in PROMPT_SOURCES:
        raise PromptError(f"prompt.source={source!r} is not one of {PROMPT_SOURCES}")
    midi_only = [k for k in ("midi", "windows", "labeller") if cfg.prompt[k]]
    if source != "midi" and midi_only:
        raise PromptError(
            f"prompt.{midi_only[0]} is read only with prompt.source=midi (now {source!r})"
        )
    if source == "scratch":
        if cfg.prompt.continue_s:
            raise PromptError("prompt.continue_s needs a piece to continue; not with scratch")
        return [scratch_prompt(layout.tokenizer)] * cfg.num_samples
    structure = loaded.structure if cfg.prompt.structure == "auto" else cfg.prompt.structure
    pieces = conditioning_pieces(cfg, loaded, layout)
    forms = target_forms(cfg.prompt, len(pieces))
    data = loaded.data_settings
    sequence = SequenceSettings(data.snippet_len, data.max_snippets, data.max_seq_len)
    prompts = [
        conditioned_prompt(
            piece,
            layout,
            form=form,
            structure=structure,
            style_key=cfg.prompt.style_key or data.style_key,
            sequence=sequence,
            decoder_only=loaded.task.data_layout == "baseline",  # its snippets are its prompt
            continue_s=cfg.prompt.continue_s,
        )
        for piece, form in zip(pieces, forms, strict=True)
    ]
    return [prompts[i % len(prompts)] for i in range(cfg.num_samples)]


def generate(cfg: DictConfig) -> Path:
    """Run one generation request end to end; returns the manifest's path."""
    settings = SamplingSettings(**OmegaConf.to_container(cfg.sampling))
    if cfg.num_samples < 1:
        raise SamplingConfigError("num_samples", cfg.num_samples, "must be >= 1")
    device = resolve_device(cfg.device)
    loaded = load_checkpoint(cfg.checkpoint, device, cfg.run_config, cfg.allow_pickle_runs_code)
    if not isinstance(loaded.net, StariaModel | DecoderOnlyBaseline):
        raise PromptError(
            f"{cfg.checkpoint}: a {type(loaded.net).__name__} does not generate; "
            "give a Staria or decoder-only baseline checkpoint"
        )
    tokenizer = MusicTokenizerWithStyle()
    prompts = build_prompts(cfg, loaded, TokenLayout(tokenizer))
    out_dir = Path(cfg.out_dir or loaded.run_dir / "generated" / (cfg.name or _timestamp()))
    check_output_folder(out_dir)  # before sampling, not after
    torch.manual_seed(cfg.seed)
    log.info("sampling %d pieces from %s into %s", len(prompts), cfg.checkpoint, out_dir)
    pieces, timing = sample_pieces(
        loaded.net,
        prompts,
        settings,
        batch_size=cfg.batch_size,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        device=device,
        cache_kv=cfg.cache_kv,
    )
    manifest = write_samples(
        pieces,
        out_dir,
        tokenizer,
        checkpoint=Path(cfg.checkpoint).resolve(),
        config=OmegaConf.to_container(cfg, resolve=True),
        seed=cfg.seed,
        timing=timing,
        # a uniform guess over the vocabulary: the loss of a model that learned nothing
        provenance={
            **training_provenance(loaded),
            "uniform_loss": math.log(tokenizer.vocab_size()),
        },
    )
    ended = sum(piece.ended_with_eos for piece in pieces)
    print(
        f"{len(pieces)} samples ({ended} ended with <E>) at {timing.tokens_per_s:.1f} tokens/s "
        f"-> {manifest}"
    )
    return manifest


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
