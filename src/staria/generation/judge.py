"""A trained classification run as a judge of pieces: the one place a classifier checkpoint is
loaded and asked what form, style or section letters a token sequence has.

Used by `staria-eval --classifier` (form and style of generated samples), the comparison's form
judge (`staria.research.compare`) and the wake-sleep section labeller
(`staria.generation.section_labelling`, also behind `prompt.labeller`). Every use reads at most
`max_len` tokens, the shorter of what the run's data fed the classifier and what its encoder's
positions reach, and never shows the form and section tokens that would give the answer away.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import torch

from staria.data.datasets import STYLE_VOCABULARIES
from staria.generation.checkpoint import load_checkpoint
from staria.models import SequenceClassifier
from staria.tokenizer import FORMS, MusicTokenizerWithStyle

# (tokens [B, T] long, token_mask [B, T] bool, True on real tokens) -> [B] indices or [B, C] logits
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# A form classifier's verdicts are reported only where it recovers this share of held-out forms:
# below it, it cannot tell a model that follows the form from one that does not.
FORM_JUDGE_MINIMUM = 0.9


class JudgeError(ValueError):
    """A checkpoint that is not a classification run; names the file."""


def predict_classes(
    predict: Predictor,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    hidden_ids: Collection[int] = (),
    batch_size: int = 32,
    max_len: int | None = None,
) -> torch.Tensor:
    """Class index per sequence [N]: right-padded batches, `hidden_ids` removed first, each
    sequence cut to `max_len`."""
    hidden = np.asarray(sorted(hidden_ids), dtype=np.int64)
    kept = [np.asarray(ids, dtype=np.int64) for ids in sequences]
    kept = [ids[~np.isin(ids, hidden)][:max_len] for ids in kept]
    predictions = []
    for first in range(0, len(kept), batch_size):
        batch = kept[first : first + batch_size]
        tokens = torch.full((len(batch), max(len(ids) for ids in batch)), pad_id, dtype=torch.long)
        mask = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = torch.from_numpy(ids)
            mask[row, : len(ids)] = True
        with torch.no_grad():
            output = predict(tokens, mask)
        predictions.append(output.argmax(dim=-1) if output.ndim == 2 else output)
    return torch.cat(predictions).long()


class ClassifierJudge:
    """The heads of a `SequenceClassifier` checkpoint (a `ClassifierTask` run), in eval mode.

    checkpoint: the run's `.ckpt`; raises `JudgeError` if it holds another network and
    `staria.generation.checkpoint.CheckpointError` if it cannot be opened.
    `class_names[task]`: the form names, or the style vocabulary of the run's `style_key`.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: torch.device | str = "cpu",
        tokenizer: MusicTokenizerWithStyle | None = None,
    ) -> None:
        loaded = load_checkpoint(checkpoint, device)
        if not isinstance(loaded.net, SequenceClassifier):
            raise JudgeError(
                f"{checkpoint}: holds a {type(loaded.net).__name__}, not a SequenceClassifier"
            )
        self.checkpoint = Path(checkpoint)
        self.net = loaded.net
        data = loaded.data_settings
        self.max_len = min(int(data.max_seq_len), self.net.encoder.net.max_seq_len)
        self.class_names = {"form": FORMS, "style": tuple(STYLE_VOCABULARIES[data.style_key])}
        tokenizer = tokenizer or MusicTokenizerWithStyle()
        self.pad_id = tokenizer.pad_id
        self.hidden_ids = np.asarray(tokenizer.structure_token_ids, dtype=np.int64)

    def head_logits(self, task: str, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of the `form` or `style` head; the style head is as wide as the largest
        style vocabulary, so only the classes of the run's style key are kept."""
        return getattr(self.net(tokens, mask), task)[:, : len(self.class_names[task])]

    def predict(self, task: str, sequences: Sequence[Sequence[int]]) -> list[str]:
        """The class name the `task` head gives each token sequence (answer tokens hidden)."""
        indices = predict_classes(
            lambda tokens, mask: self.head_logits(task, tokens, mask),
            sequences,
            self.pad_id,
            self.hidden_ids,
            max_len=self.max_len,
        )
        return [self.class_names[task][i] for i in indices.tolist()]

    def section_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token section logits [B, T, 4] (A-D) of tokens [B, T <= max_len]."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"{tokens.shape[1]} tokens; this classifier reads {self.max_len}")
        with torch.no_grad():
            return self.net(tokens, mask).section
