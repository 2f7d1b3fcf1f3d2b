"""Listenable samples on a training run's W&B page at each validation.

`WandbSamples` samples a few pieces conditioned on the first validation pieces (their
snippets, the decoder start the data's layout calls for), writes them as MIDI and logs each
with its piano roll and an audio preview (`evaluation.report.log_to_wandb`, keys
`val_samples/...`). It acts only with a `WandbLogger`, for generative models, on rank zero;
its sampling draws from a forked RNG seeded by the step, so training is the same with or
without it (and a resumed run samples the same pieces).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from staria.data.sequences import TokenLayout
from staria.evaluation.report import log_to_wandb, render_samples
from staria.evaluation.samples import read_manifest
from staria.generation.manifest import write_samples
from staria.generation.prompts import conditioned_prompt, piece_from_split
from staria.generation.sampling import SamplingSettings, SamplingTiming, sample_pieces
from staria.models import DecoderOnlyBaseline, StariaModel
from staria.tokenizer import TokenTable

PREFIX = "val_samples"


class WandbSamples(pl.Callback):
    """Every `every_n_validations` validations: `num_samples` samples of at most `max_length`
    decoder tokens (temperature, top-p) logged to the run's W&B page."""

    def __init__(
        self,
        num_samples: int = 2,
        max_length: int = 512,
        every_n_validations: int = 1,
        temperature: float = 1.0,
        top_p: float | None = 0.95,
        audio_seconds: float = 10.0,
    ):
        if num_samples < 1 or every_n_validations < 1:
            raise ValueError(
                f"num_samples={num_samples} and every_n_validations={every_n_validations} "
                "must be >= 1"
            )
        self.num_samples, self.every_n_validations = num_samples, every_n_validations
        self.settings = SamplingSettings(
            temperature=temperature, top_p=top_p, max_length=max_length
        )
        self.audio_seconds = audio_seconds
        self._validations = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        runs = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        net = pl_module.net
        if trainer.sanity_checking or not trainer.is_global_zero or not runs:
            return
        if not isinstance(net, StariaModel | DecoderOnlyBaseline):
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        datamodule = trainer.datamodule
        split = datamodule.datasets["val"].source.split
        tokenizer = datamodule.tokenizer
        layout = TokenLayout(tokenizer)
        prompts = [
            conditioned_prompt(
                piece_from_split(split, index, tokenizer),
                layout,
                form=None,
                structure=datamodule.structure(),
                style_key=datamodule.style_key,
                sequence=datamodule.sequence,
                decoder_only=isinstance(net, DecoderOnlyBaseline),
            )
            for index in range(min(self.num_samples, len(split)))
        ]
        training = net.training
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(trainer.global_step)
            net.eval()
            pieces, timing = sample_pieces(
                net,
                prompts,
                self.settings,
                batch_size=len(prompts),
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
                device=pl_module.device,
            )
            net.train(training)
        self._log(runs[0], pieces, timing, tokenizer, trainer.global_step)

    def _log(self, logger: WandbLogger, pieces, timing: SamplingTiming, tokenizer, step: int):
        with tempfile.TemporaryDirectory() as folder:
            out_dir = Path(folder) / f"step{step}"
            manifest = write_samples(
                pieces, out_dir, tokenizer, checkpoint="", config={}, seed=step, timing=timing
            )
            samples = read_manifest(manifest)
            table = TokenTable.from_tokenizer(tokenizer)
            media = render_samples(samples, table, audio_seconds=self.audio_seconds)
            log_to_wandb({}, media, run=logger.experiment, prefix=PREFIX)
