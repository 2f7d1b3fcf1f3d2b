"""Task behaviour that the training runs do not show: one forward pass per evaluation batch."""

import hydra
import lightning.pytorch as pl
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from staria.data.datasets import IGNORE_INDEX
from staria.models.classifier import ClassifierLogits
from staria.training.config import compose_net
from staria.training.tasks import BaselineTask, ClassifierTask, StariaTask
from staria.training.tasks.base import chunked_sequence_loss, sequence_loss
from tests.training.runs import first_train_batch, synthetic_datamodule


def classifier_task(net: torch.nn.Module) -> ClassifierTask:
    """A classification task around `net` with the shared optimizer and a 1-step schedule."""
    return ClassifierTask(
        net,
        optimizer={"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        scheduler={"warmup_steps": 1, "total_steps": 1, "min_lr_ratio": 0.1},
    )


def validator(**settings) -> pl.Trainer:
    """A quiet CPU trainer that only validates."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return pl.Trainer(accelerator="cpu", enable_model_summary=False, **quiet, **settings)


def test_classifier_validation_runs_the_network_once_per_batch(tmp_path):
    datamodule = synthetic_datamodule(
        tmp_path,
        task="classification",
        synthesis={"pieces_per_form": 4, "min_tokens": 128, "max_tokens": 256},
        max_seq_len=96,
        batch_size=2,
    )
    torch.manual_seed(0)
    net = hydra.utils.instantiate(compose_net("classifier_tiny"))
    task = classifier_task(net)
    forward_calls = []
    net.register_forward_hook(lambda module, args, output: forward_calls.append(output))
    results = validator(limit_val_batches=3).validate(task, datamodule=datamodule)
    (metrics,) = results
    assert len(forward_calls) == 3
    assert {"val/loss", "val/form_accuracy", "val/style_accuracy"} <= set(metrics)
    assert "val/section_accuracy" in metrics  # its value: the test below, on known logits
    assert metrics["val/loss"] > 0.0


def one_hot_logits(*classes: int, width: int) -> torch.Tensor:
    """Logits whose argmax is each of `classes` in turn."""
    return torch.nn.functional.one_hot(torch.tensor(classes), width).float()


class FixedClassifier(torch.nn.Module):
    """A classifier with the real heads' sizes that answers each batch with the logits given."""

    def __init__(self, answers: list[ClassifierLogits]):
        super().__init__()
        self.form_head = torch.nn.Linear(1, 9)
        self.style_head = torch.nn.Linear(1, 13)
        self.section_head = torch.nn.Linear(1, 4)
        self.answers = answers

    def forward(self, tokens, token_mask) -> ClassifierLogits:
        return self.answers.pop(0)


def test_classifier_accuracies_are_each_heads_mean_recall_over_its_classes(tmp_path):
    """Two validation batches of one piece, four tokens each, with known predictions. Each
    head's accuracy is torchmetrics' macro average: the mean over the classes a label or a
    prediction names of the fraction of that class's labels predicted right; IGNORE_INDEX
    labels (an unknown style, an unlabelled token) count nowhere."""
    ignore = IGNORE_INDEX
    batches = [
        {
            "tokens": torch.ones(1, 4, dtype=torch.long),
            "token_mask": torch.ones(1, 4, dtype=torch.bool),
            "form_label": torch.tensor([form]),
            "style_label": torch.tensor([style]),
            "section_labels": torch.tensor([sections]),
        }
        for form, style, sections in [
            (2, 1, [0, 1, ignore, 2]),
            (5, ignore, [0, 2, ignore, ignore]),
        ]
    ]
    answers = [
        ClassifierLogits(
            form=one_hot_logits(2, width=9),
            style=one_hot_logits(1, width=13),
            section=one_hot_logits(0, 1, 3, 1, width=4).unsqueeze(0),
        ),
        ClassifierLogits(
            form=one_hot_logits(3, width=9),
            style=one_hot_logits(7, width=13),
            section=one_hot_logits(0, 2, 0, 0, width=4).unsqueeze(0),
        ),
    ]
    task = classifier_task(FixedClassifier(answers))
    batches_loader = torch.utils.data.DataLoader(batches, batch_size=None)
    (metrics,) = validator(default_root_dir=tmp_path).validate(task, dataloaders=batches_loader)
    assert not answers, "one forward pass per batch"
    # Sections, labelled tokens only: 0 -> 0 twice (1), 1 -> 1 (1), 2 -> 1 and 2 -> 2 (1/2);
    # section 3 is predicted only on unlabelled tokens, so it is not a class here.
    assert metrics["val/section_accuracy"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    # Forms: 2 -> 2 (1), 5 -> 3 (0), and form 3, predicted but never the label, 0.
    assert metrics["val/form_accuracy"] == pytest.approx((1 + 0 + 0) / 3)
    # Styles: the second piece's is unknown, so only 1 -> 1 counts.
    assert metrics["val/style_accuracy"] == pytest.approx(1.0)


def _generative_task(kind: str, chunk: int | None, tmp_path):
    datamodule = synthetic_datamodule(
        tmp_path,
        model_kind=kind,
        synthesis={"pieces_per_form": 4, "min_tokens": 128, "max_tokens": 256},
        max_seq_len=96,
        snippet_len=16,
        batch_size=3,
    )
    batch = first_train_batch(datamodule)
    torch.manual_seed(0)
    net = hydra.utils.instantiate(compose_net(f"{kind}_tiny"))
    task_class = StariaTask if kind == "staria" else BaselineTask
    settings = {
        "optimizer": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "scheduler": {"warmup_steps": 1, "total_steps": 1, "min_lr_ratio": 0.1},
    }
    return task_class(net, **settings, loss_chunk_tokens=chunk), batch


@pytest.mark.parametrize("kind", ["staria", "baseline"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_chunked_loss_gives_the_full_logits_loss_and_gradients(kind, chunk, tmp_path):
    torch.set_num_threads(1)
    plain, batch = _generative_task(kind, None, tmp_path)
    chunked, _ = _generative_task(kind, chunk, tmp_path)
    chunked.net.load_state_dict(plain.net.state_dict())
    results = []
    for task in (plain, chunked):
        step = task.step_loss(batch)
        step.loss.backward()
        grads = {n: p.grad.clone() for n, p in task.net.named_parameters() if p.grad is not None}
        results.append((step, grads))
    (plain_step, plain_grads), (chunked_step, chunked_grads) = results
    assert torch.allclose(plain_step.loss, chunked_step.loss, rtol=1e-5, atol=1e-6)
    assert plain_step.count == chunked_step.count
    assert plain_grads.keys() == chunked_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, chunked_grads[name], rtol=1e-4, atol=1e-6), name


def test_chunked_loss_holds_one_chunk_of_logits_at_a_time():
    torch.manual_seed(0)
    hidden = torch.randn(2, 50, 8, requires_grad=True)
    head = torch.randn(1000, 8, requires_grad=True)
    tokens = torch.randint(0, 1000, (2, 50))
    mask = torch.ones(2, 50, dtype=torch.bool)
    widest = []

    def pack(tensor):  # every tensor autograd keeps for the backward pass
        if tensor.dim() == 2 and tensor.shape[-1] == 1000:
            widest.append(tensor.shape[0])
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        chunked_sequence_loss(hidden, head, tokens, mask, chunk_tokens=16).loss.backward()
    assert widest == [], "no [rows, vocab] logits are kept for the backward pass"
    assert hidden.grad is not None and head.grad is not None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):  # the control
        sequence_loss(hidden @ head.t(), tokens, mask).loss.backward()
    assert 100 in widest, "the full-logits loss keeps all 2 x 50 rows of logits"


def _head_problem(rows_grad: bool = True, head_grad: bool = True):
    torch.manual_seed(0)
    hidden = torch.randn(2, 50, 8, requires_grad=rows_grad)
    head = torch.randn(1000, 8, requires_grad=head_grad)
    tokens = torch.randint(0, 1000, (2, 50))
    mask = torch.rand(2, 50) < 0.8
    return hidden, head, tokens, mask


def test_chunked_loss_computes_no_logits_twice():
    """Its head matmuls are the full-logits loss's (forward, and two for the gradients): the
    FLOPs of forward + backward are equal, where recomputing them would add a third."""
    hidden, head, tokens, mask = _head_problem()
    flops = []
    for loss in (
        lambda: sequence_loss(hidden @ head.t(), tokens, mask).loss,
        lambda: chunked_sequence_loss(hidden, head, tokens, mask, chunk_tokens=16).loss,
    ):
        with FlopCounterMode(display=False) as counter:
            loss().backward()
        flops.append(counter.get_total_flops())
    plain_rows = 2 * 50  # the full-logits loss projects every position, the chunked one only
    kept_rows = int(mask[:, 1:].sum())  # those whose target counts
    assert flops[0] == 3 * 2 * plain_rows * 8 * 1000
    assert flops[1] == 3 * 2 * kept_rows * 8 * 1000


@pytest.mark.parametrize(("rows_grad", "head_grad"), [(True, False), (False, True)])
def test_chunked_loss_gradients_only_for_what_trains(rows_grad, head_grad):
    """A frozen head (stage A) or frozen hidden states get no gradient; the others are the
    full-logits loss's."""
    results = []
    for chunked in (False, True):
        hidden, head, tokens, mask = _head_problem(rows_grad, head_grad)
        if chunked:
            step = chunked_sequence_loss(hidden, head, tokens, mask, chunk_tokens=7)
        else:
            step = sequence_loss(hidden @ head.t(), tokens, mask)
        step.loss.backward()
        results.append((step.loss, hidden.grad, head.grad))
    (plain_loss, plain_hidden, plain_head), (loss, hidden_grad, head_grad_) = results
    assert torch.allclose(loss, plain_loss, rtol=1e-5)
    assert (hidden_grad is None) == (not rows_grad) and (head_grad_ is None) == (not head_grad)
    for ours, reference in ((hidden_grad, plain_hidden), (head_grad_, plain_head)):
        if reference is not None:
            assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_chunked_loss_without_grad_computes_the_loss_alone():
    hidden, head, tokens, mask = _head_problem()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss = chunked_sequence_loss(hidden, head, tokens, mask, chunk_tokens=16).loss
    assert torch.allclose(loss, sequence_loss(hidden @ head.t(), tokens, mask).loss, rtol=1e-5)
    assert counter.get_total_flops() == 2 * int(mask[:, 1:].sum()) * 8 * 1000  # forward only
    assert not loss.requires_grad
