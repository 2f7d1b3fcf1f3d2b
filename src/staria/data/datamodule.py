"""`MidiDataModule`: from a MIDI folder (or nothing, in synthetic mode) to batches for every task.

`prepare_data` (one process per node) synthesises and indexes into `cache_dir`, reusing what a
previous run finished; `setup` only opens the finished cache. Loaders shard by the trainer's
rank, bucket by length, and are `StatefulDataLoader`s so a mid-epoch resume is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from staria.data.cache import COMPLETE_MARKER, CachedSplit, IncompleteIndexError
from staria.data.collate import Collator, LengthBucketBatchSampler
from staria.data.datasets import (
    ClassificationDataset,
    ContrastiveDataset,
    GenerativeDataset,
    PieceSource,
    SequenceSettings,
    SnippetAugmenter,
)
from staria.data.labels import SPLITS
from staria.data.preprocess import (
    IndexResult,
    IndexSettings,
    build_index,
    exclusive_lock,
    find_index,
)
from staria.data.sequences import TokenLayout
from staria.data.synthetic import SynthesisConfig, synthesize
from staria.data.workers import init_worker
from staria.tokenizer import MusicTokenizerWithStyle

MODES = ("synthetic", "real")
TASKS = ("generative", "contrastive", "classification")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def synthetic_pieces(config: SynthesisConfig, cache_dir: Path) -> Path:
    """Folder of synthetic pieces for `config`, synthesised once and renamed into place whole.

    A file lock makes concurrent callers (sweep points, ranks sharing a disk) wait for the one
    that synthesises instead of racing it.
    """
    key = hashlib.sha256(json.dumps(asdict(config), default=str).encode()).hexdigest()[:12]
    folder = cache_dir / f"synthetic_{key}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache_dir / f".synthetic_{key}.lock"):
        if not (folder / COMPLETE_MARKER).is_file():
            temp = cache_dir / f".tmp-{os.getpid()}-{folder.name}"
            shutil.rmtree(temp, ignore_errors=True)
            synthesize(config, temp)
            (temp / COMPLETE_MARKER).write_text("complete\n")
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted run's leftovers
            os.replace(temp, folder)
    return folder


class EpochStatefulDataLoader(StatefulDataLoader):
    """`StatefulDataLoader` whose state also holds its batch sampler's epoch.

    Restored mid-epoch after the first epoch, a loader with workers starts prefetching as soon
    as its iterator is made, which Lightning does before it sets the epoch: the batches then
    came in epoch 0's order. With the epoch in the loader's own state, the order is restored
    before any batch is drawn.
    """

    def state_dict(self) -> dict:
        return {**super().state_dict(), "batch_sampler_epoch": self.batch_sampler.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        epoch = state.pop("batch_sampler_epoch", None)
        if epoch is not None:
            self.batch_sampler.set_epoch(epoch)
        super().load_state_dict(state)


class NotEnoughDataError(ValueError):
    """The indexed data cannot train: a split training needs has no examples."""


class MidiDataModule(L.LightningDataModule):
    """Batches for `task` (generative, contrastive, classification) from synthetic or real MIDI.

    Batch layouts follow docs/architecture.md "Batches"; the cache layout docs/data-format.md.
    """

    def __init__(
        self,
        mode: str = "synthetic",
        task: str = "generative",
        model_kind: str = "staria",
        name: str = "demo",
        cache_dir: str = "data_cache",
        folders: Sequence[str] = (),
        synthesis: dict[str, Any] | None = None,
        limit: int = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        snippet_len: int = 256,
        max_snippets: int = 4,
        max_seq_len: int = 4096,
        classification_unit: str = "piece",
        style_key: str = "genre",
        augment: bool = True,
        batch_size: int = 8,
        bucket_batches: int = 32,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        index_workers: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data mode {mode!r} is not one of {MODES}")
        if task not in TASKS:
            raise ValueError(f"data task {task!r} is not one of {TASKS}")
        if mode == "real" and not folders:
            raise ValueError("data mode 'real' needs `folders` of MIDI files")
        missing = [str(f) for f in folders or [] if not Path(f).exists()]
        if mode == "real" and missing:
            raise FileNotFoundError(
                f"data.folders: {', '.join(missing)} does not exist (relative paths resolve "
                f"against {Path.cwd()}); give data.folders=[...] or set STARIA_MIDI_DIR"
            )
        for key, value, least in (  # not `name`: that is the data set's name below
            ("snippet_len", snippet_len, 1),
            ("max_snippets", max_snippets, 1),
            ("max_seq_len", max_seq_len, 2),
            ("batch_size", batch_size, 1),
            ("bucket_batches", bucket_batches, 1),
            ("num_workers", num_workers, 0),
            ("limit", limit, 0),
        ):
            if value < least:
                raise ValueError(f"{key}={value}: must be at least {least}")
        self.save_hyperparameters(logger=False)
        self.mode, self.task, self.model_kind = mode, task, model_kind
        self.cache_dir = Path(cache_dir)
        self.folders = [Path(f) for f in folders]
        self.synthesis = SynthesisConfig(**(synthesis or {}))
        self.index_settings = IndexSettings(mode, name, limit, val_fraction, test_fraction)
        self.sequence = SequenceSettings(snippet_len, max_snippets, max_seq_len)
        self.classification_unit, self.style_key, self.augment = (
            classification_unit,
            style_key,
            augment,
        )
        self.batch_size, self.bucket_batches, self.seed = batch_size, bucket_batches, seed
        self.num_workers, self.persistent_workers = num_workers, persistent_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.index_workers = index_workers
        self.tokenizer = MusicTokenizerWithStyle()
        self.datasets: dict[str, Dataset] = {}
        self._index: IndexResult | None = None
        self._set_up: set[str] = set()

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size()

    @property
    def max_snippet_tokens(self) -> int:
        """Longest snippet row: the section token plus `snippet_len` tokens."""
        return self.sequence.snippet_len + 1

    def sources(self) -> list[Path]:
        if self.mode == "real":
            return self.folders
        return [synthetic_pieces(self.synthesis, self.cache_dir)]

    def prepare_data(self) -> None:
        """Build (or find) the index, once per data module: `staria-train` prepares it before
        the run starts, and Lightning's call inside `fit` then costs nothing."""
        if self._index is None:
            self._index = build_index(
                self.sources(), self.cache_dir, self.index_settings, workers=self.index_workers
            )

    def setup(self, stage: str | None = None) -> None:
        """The datasets of `stage`'s splits, built once per stage."""
        stage = stage or "fit"
        if stage in self._set_up:
            return
        found = self._index or find_index(self.sources(), self.cache_dir, self.index_settings)
        if found is None:
            raise IncompleteIndexError(
                f"no complete index for {self.index_settings} in {self.cache_dir}; "
                "call prepare_data() (the Trainer does) or run `staria-data index`"
            )
        layout = TokenLayout(self.tokenizer)
        for split in STAGE_SPLITS.get(stage, SPLITS):
            source = PieceSource(CachedSplit(found.split_dirs[split]), layout)
            self.datasets[split] = self._dataset(source, split)
        if stage == "fit":
            self.check_trainable(found)
        self._set_up.add(stage)

    def used_token_ids(self) -> np.ndarray:
        """Every id the indexed splits hold, with the special and Staria tokens (sorted, int64):
        the rows of a compact vocabulary (`model.vocabulary=compact`). Prepares the index."""
        self.prepare_data()
        vocab_size = self.vocab_size
        used = np.zeros(vocab_size, dtype=bool)
        for folder in self._index.split_dirs.values():
            used |= CachedSplit(folder).id_counts(vocab_size) > 0
        tok = self.tokenizer
        always = [tok.bos_id, tok.eos_id, tok.pad_id, tok.unknown_id, tok.dim_id, tok.time_id]
        used[[*always, *tok.staria_token_ids]] = True
        return np.flatnonzero(used)

    def structure(self) -> str | None:
        """How the training pieces are laid out: `labelled` (form and section tokens, most
        train pieces have sections) or `plain` (unlabelled real MIDI); None before `setup`."""
        train = self.datasets.get("train")
        if train is None or not hasattr(train, "source"):
            return None
        pieces = train.source.split.pieces
        labelled = sum(bool(record.sections) for record in pieces)
        return "labelled" if pieces and 2 * labelled >= len(pieces) else "plain"

    def check_trainable(self, found: IndexResult) -> None:
        """`NotEnoughDataError` unless training has examples and validation has some (unless
        switched off: `val_fraction=0` or `trainer.limit_val_batches=0`): an empty or tiny
        folder fails before any step, naming the folders, the counts and what is needed."""
        validates = self.index_settings.val_fraction > 0 and (
            self.trainer is None or self.trainer.limit_val_batches != 0
        )
        needed = ("train", "val") if validates else ("train",)
        empty = [split for split in needed if len(self.datasets[split]) == 0]
        if not empty:
            return
        counts = ", ".join(f"{split} {n}" for split, n in found.counts.items())
        where = ", ".join(str(s) for s in self.sources())
        raise NotEnoughDataError(
            f"{where}: no {' or '.join(empty)} examples (pieces indexed: {counts}; report "
            f"{found.report_path}). Training needs at least one training and one validation "
            f"piece: add MIDI files to `data.folders`, raise `data.val_fraction` (now "
            f"{self.index_settings.val_fraction}), or switch validation off with "
            "trainer.limit_val_batches=0"
        )

    def _dataset(self, source: PieceSource, split: str) -> Dataset:
        seed = self.seed + SPLITS.index(split)
        if self.task == "generative":
            return GenerativeDataset(source, self.sequence, self.model_kind, seed)
        if self.task == "contrastive":
            augment = SnippetAugmenter(self.tokenizer) if self.augment else None
            return ContrastiveDataset(source, self.sequence, augment, seed)
        return ClassificationDataset(
            source, self.sequence, self.classification_unit, self.style_key, seed
        )

    def _rank(self) -> tuple[int, int]:
        """(world size, rank) of the attached trainer; (1, 0) outside one."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, split: str, shuffle: bool) -> EpochStatefulDataLoader:
        dataset = self.datasets[split]
        world_size, rank = self._rank()
        sampler = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=shuffle,
        )
        batch_sampler = LengthBucketBatchSampler(
            sampler,
            self.batch_size,
            drop_last=False,
            lengths=dataset.lengths,
            bucket_batches=self.bucket_batches,
            seed=self.seed,
        )
        return EpochStatefulDataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=Collator(self.pad_id),
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=partial(init_worker, rank=rank) if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test", shuffle=False)
