"""Does a sample sound like the form (or style) it was asked for? A trained classifier decides.

The classifier enters as a plain `predict(tokens, token_mask)` callable (a
`staria.generation.judge.ClassifierJudge` head in use); the scores themselves are torchmetrics'.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from staria.data.datasets import IGNORE_INDEX  # no label asked for: left out of every score
from staria.evaluation.samples import GeneratedSample
from staria.generation.judge import Predictor, predict_classes

TASKS = ("form", "style")


@dataclass(frozen=True)
class ClassificationScores:
    """Scores of one task; `confusion[i][j]` counts samples asked for class i, predicted j."""

    task: str
    class_names: tuple[str, ...]
    num_scored: int
    accuracy: float
    macro_f1: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]
    confusion: list[list[int]]

    def as_dict(self) -> dict:
        return asdict(self)


def requested_classes(
    samples: Sequence[GeneratedSample], task: str, class_names: Sequence[str]
) -> torch.Tensor:
    """Index of what each sample asked for under `task` ("form" or "style"), or IGNORE_INDEX."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    index = {name: i for i, name in enumerate(class_names)}
    labels = []
    for sample in samples:
        label = getattr(sample, task)
        if label is not None and label not in index:
            raise ValueError(f"sample {sample.name}: {task} {label!r} is not one of {class_names}")
        labels.append(IGNORE_INDEX if label is None else index[label])
    return torch.tensor(labels, dtype=torch.long)


def score_classes(
    task: str, predicted: torch.Tensor, requested: torch.Tensor, class_names: Sequence[str]
) -> ClassificationScores:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix, skipping unknown labels."""
    num_classes = len(class_names)
    common = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX}

    def per_class(metric) -> dict[str, float]:
        values = metric(predicted, requested, average="none", **common).tolist()
        return dict(zip(class_names, values, strict=True))

    confusion = multiclass_confusion_matrix(predicted, requested, **common)
    return ClassificationScores(
        task=task,
        class_names=tuple(class_names),
        num_scored=int((requested != IGNORE_INDEX).sum()),
        accuracy=float(multiclass_accuracy(predicted, requested, average="micro", **common)),
        macro_f1=float(multiclass_f1_score(predicted, requested, average="macro", **common)),
        precision=per_class(multiclass_precision),
        recall=per_class(multiclass_recall),
        f1=per_class(multiclass_f1_score),
        support=dict(zip(class_names, confusion.sum(dim=1).tolist(), strict=True)),
        confusion=confusion.tolist(),
    )


def confusion_png(scores: ClassificationScores) -> bytes:
    """The confusion matrix as a PNG, counts written in the cells (Agg canvas, no display)."""
    names, counts = scores.class_names, np.array(scores.confusion)
    figure = Figure(figsize=(1.5 + 0.6 * len(names), 1.2 + 0.6 * len(names)), dpi=100)
    axes = figure.add_subplot()
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel(f"predicted {scores.task}")
    axes.set_ylabel(f"requested {scores.task}")
    for (row, column), count in np.ndenumerate(counts):
        color = "white" if count > counts.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color)
    axes.set_title(f"{scores.task}: accuracy {scores.accuracy:.2f}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_scores(scores: ClassificationScores, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `<task>_scores.json` and `<task>_confusion.png` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{scores.task}_scores.json"
    json_path.write_text(json.dumps(scores.as_dict(), indent=2, ensure_ascii=False))
    png_path = out_dir / f"{scores.task}_confusion.png"
    png_path.write_bytes(confusion_png(scores))
    return json_path, png_path


def classify_samples(
    predict: Predictor,
    samples: Sequence[GeneratedSample],
    task: str,
    class_names: Sequence[str],
    pad_id: int,
    hidden_ids: Collection[int] = (),
    batch_size: int = 32,
    max_len: int | None = None,
) -> ClassificationScores:
    """Score `samples` on `task`: what the classifier hears against what each sample asked for."""
    requested = requested_classes(samples, task, class_names)
    predicted = predict_classes(
        predict, [s.token_ids for s in samples], pad_id, hidden_ids, batch_size, max_len
    )
    return score_classes(task, predicted, requested, class_names)
