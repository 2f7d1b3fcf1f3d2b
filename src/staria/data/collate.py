"""Padding items into batch tensors, and length bucketing so little compute goes to padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from staria.data.datasets import IGNORE_INDEX

# Sequence keys padded along time; the first of each pair gets a `<key>_mask` (True = real).
_TOKEN_KEYS = {"tokens": "token_mask", "view_a": "view_a_mask", "view_b": "view_b_mask"}
_LABEL_PADS = {"loss_mask": False, "section_labels": IGNORE_INDEX}


def pad_sequences(
    sequences: Sequence[np.ndarray], pad_value: int | bool, length: int | None = None
) -> torch.Tensor:
    """Right-pad 1-D sequences to one length (the longest, or `length`) as a [B, T] tensor."""
    length = max((len(s) for s in sequences), default=0) if length is None else length
    dtype = torch.bool if isinstance(pad_value, bool) else torch.long
    batch = torch.full((len(sequences), length), pad_value, dtype=dtype)
    for row, sequence in enumerate(sequences):
        batch[row, : len(sequence)] = torch.as_tensor(np.asarray(sequence), dtype=dtype)
    return batch


class Collator:
    """Pads a list of dataset items into the batch dict of docs/architecture.md "Batches"."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key == "snippets":
                batch["snippets"], batch["snippet_mask"] = self._pad_snippets(values)
            elif key in _TOKEN_KEYS:
                batch[key] = pad_sequences(values, self.pad_id)
                batch[_TOKEN_KEYS[key]] = pad_sequences(
                    [np.ones(len(v), bool) for v in values], False
                )
            elif key in _LABEL_PADS:
                batch[key] = pad_sequences(values, _LABEL_PADS[key])
            else:
                batch[key] = torch.as_tensor(values, dtype=torch.long)
        return batch

    def _pad_snippets(self, snippets: list[list[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, S, L] snippets and mask; a piece's missing snippets are all-pad rows (mask False)."""
        count = max(len(piece) for piece in snippets)
        length = max((len(s) for piece in snippets for s in piece), default=0)
        tokens = torch.full((len(snippets), count, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(snippets), count, length), dtype=torch.bool)
        for row, piece in enumerate(snippets):
            for column, snippet in enumerate(piece):
                tokens[row, column, : len(snippet)] = torch.as_tensor(snippet, dtype=torch.long)
                mask[row, column, : len(snippet)] = True
        return tokens, mask


class LengthBucketBatchSampler(BatchSampler):
    """Batches of similar length: the sampler's order is cut into buckets of `bucket_batches`
    batches, each bucket sorted by length, and the batches of a bucket shuffled.

    It takes the index `sampler` like `BatchSampler`, so Lightning can inject its
    `DistributedSampler`. The epoch is the index sampler's when it has one (Lightning sets the
    epoch there, not here), so the bucket shuffle changes with it; `set_epoch` sets both.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int],
        bucket_batches: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = np.asarray(lengths)
        self.bucket_batches = bucket_batches
        self.seed = seed
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return getattr(self.sampler, "epoch", self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        total, bucket_size = len(self.sampler), self.batch_size * self.bucket_batches
        sizes = [bucket_size] * (total // bucket_size) + (
            [total % bucket_size] if total % bucket_size else []
        )
        per_bucket = (
            s // self.batch_size if self.drop_last else -(-s // self.batch_size) for s in sizes
        )
        return sum(per_bucket)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = list(self.sampler)
        bucket_size = self.batch_size * self.bucket_batches
        for start in range(0, len(order), bucket_size):
            bucket = np.asarray(order[start : start + bucket_size])
            bucket = bucket[np.argsort(self.lengths[bucket], kind="stable")]
            batches = [
                bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size)
            ]
            if self.drop_last and len(batches[-1]) < self.batch_size:
                batches.pop()
            for batch in rng.permutation(len(batches)):
                yield batches[batch].tolist()
