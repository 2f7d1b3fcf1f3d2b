"""What every training task shares: AdamW with warmup/cosine, stage schedule, step metrics.

Subclasses say only how a batch becomes a loss (`step_loss`); logging, optimisation, stage
freezing, weight initialisation and torch.compile live here. Flash attention and activation
checkpointing are options of the networks (`conf/model/net`).
"""

import math
import time
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, TypedDict

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from staria.data.datasets import IGNORE_INDEX
from staria.models.xtransformers import CompactHead, use_compact_vocabulary
from staria.tokenizer import UNKNOWN_ID
from staria.training import safe_loading
from staria.training.safe_loading import plain
from staria.training.stages import StageSchedule

# Checkpoint key: facts about the training data that using the model depends on.
TRAINED_ON = "staria_trained_on"


@dataclass
class StepLoss:
    """A batch's loss and how many tokens (or examples) it was averaged over."""

    loss: torch.Tensor
    count: torch.Tensor


class InitWeightsError(ValueError):
    """`init_from` weights do not match the model."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor: linear warmup to 1, cosine decay to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sequence_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> StepLoss:
    """Next-token cross entropy; `loss_mask[b, t]` says whether predicting `tokens[b, t]` counts.

    The targets are shifted rather than the logits: slicing [B,T,V] logits would copy them.
    """
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, :-1] = tokens[:, 1:].masked_fill(~loss_mask[:, 1:], IGNORE_INDEX)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return StepLoss(loss, loss_mask[:, 1:].sum())


def chunked_sequence_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_tokens: int,
) -> StepLoss:
    """`sequence_loss` from the final hidden states [B,T,D] and the output head's weight
    [V,D], never holding more than `chunk_tokens` x V logits: only positions whose target
    counts are projected, `chunk_tokens` rows at a time, and each chunk's gradients are
    computed as soon as its logits are (fused linear cross entropy, as Liger-Kernel's), so
    no logits are kept for the backward pass and none are computed twice. Same loss and
    gradients as `sequence_loss` up to float summation order."""
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, :-1] = tokens[:, 1:].masked_fill(~loss_mask[:, 1:], IGNORE_INDEX)
    keep = targets.flatten() != IGNORE_INDEX
    rows, labels = hidden.flatten(0, 1)[keep], targets.flatten()[keep]
    grad = torch.is_grad_enabled()
    total = _FusedLinearCrossEntropy.apply(
        rows,
        head_weight,
        labels,
        chunk_tokens,
        grad and rows.requires_grad,
        grad and head_weight.requires_grad,
    )
    return StepLoss(total / keep.sum(), loss_mask[:, 1:].sum())


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross entropy of `rows @ weight.T` [N,V] (fp32 softmax) against `labels` [N],
    one chunk of rows at a time; the gradients for `rows` [N,D] and `weight` [V,D] are
    computed chunk by chunk in the forward pass and only scaled in the backward pass."""

    @staticmethod
    def forward(ctx, rows, weight, labels, chunk_tokens, rows_grad, weight_grad):
        total = rows.new_zeros((), dtype=torch.float32)
        grad_rows = torch.empty_like(rows) if rows_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight_grad else None
        for start in range(0, len(rows), chunk_tokens):
            end = start + chunk_tokens
            chunk, chunk_labels = rows[start:end], labels[start:end]
            # One [rows, V] buffer: logits, then exp(logits - max), then the softmax, then
            # d(loss)/d(logits) = softmax - one-hot, each in place (logsumexp would add one).
            logits = (chunk @ weight.t()).float()
            target_logits = logits.gather(1, chunk_labels[:, None])
            top = logits.amax(-1, keepdim=True)
            norm = logits.sub_(top).exp_().sum(-1, keepdim=True)
            total += (norm.log() + top - target_logits).sum()
            if not (rows_grad or weight_grad):
                continue
            grad_logits = logits.div_(norm)
            grad_logits[torch.arange(len(chunk), device=logits.device), chunk_labels] -= 1
            grad_logits = grad_logits.to(chunk.dtype)
            if rows_grad:
                grad_rows[start:end] = grad_logits @ weight
            if weight_grad:
                grad_weight += (grad_logits.t() @ chunk).float()
        ctx.save_for_backward(grad_rows, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad_rows, grad_weight = ctx.saved_tensors
        if grad_rows is not None:
            grad_rows = grad_rows * grad_total.to(grad_rows.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_rows, grad_weight, None, None, None, None


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """Total and trainable parameters, overall and per top-level part (`encoder`, `decoder`)."""
    counts: dict[str, int] = {}
    parts = dict(net.named_children()) or {"net": net}
    for part, module in [("all", net), *parts.items()]:
        params = list(module.parameters())
        counts[f"params/{part}/total"] = sum(p.numel() for p in params)
        counts[f"params/{part}/trainable"] = sum(p.numel() for p in params if p.requires_grad)
    return counts


def build_stage_schedule(stage: dict | None):
    """The stage group's schedule (training/stages.py), or None for models trained whole."""
    if not stage or stage["name"] == "none":
        return None
    return StageSchedule.from_config(stage)


class OptimizerSettings(TypedDict):
    """AdamW settings (`model.optimizer`)."""

    lr: float
    betas: list[float]
    weight_decay: float


class SchedulerSettings(TypedDict):
    """Linear warm-up then cosine decay to `min_lr_ratio` x lr (`model.scheduler`), in steps."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float


def check_settings(optimizer: OptimizerSettings, scheduler: SchedulerSettings) -> None:
    """Values AdamW and the schedule can use, named when not: `ValueError` at build time,
    not a crash (or NaN weights) mid-run."""
    missing = [
        f"{group}.{name}"
        for group, settings, kind in (
            ("optimizer", optimizer, OptimizerSettings),
            ("scheduler", scheduler, SchedulerSettings),
        )
        for name in kind.__annotations__
        if name not in settings
    ]
    if missing:
        raise ValueError(f"missing settings: {', '.join(missing)}")
    betas = list(optimizer["betas"])
    checks = {
        f"optimizer.lr={optimizer['lr']}": 0 <= optimizer["lr"] < math.inf,
        f"optimizer.betas={betas}": len(betas) == 2 and all(0 <= b < 1 for b in betas),
        f"optimizer.weight_decay={optimizer['weight_decay']}": (
            0 <= optimizer["weight_decay"] < math.inf
        ),
        f"scheduler.warmup_steps={scheduler['warmup_steps']}": scheduler["warmup_steps"] >= 0,
        f"scheduler.total_steps={scheduler['total_steps']}": scheduler["total_steps"] > 0,
        f"scheduler.min_lr_ratio={scheduler['min_lr_ratio']}": (
            0 <= scheduler["min_lr_ratio"] <= 1
        ),
    }
    wrong = [setting for setting, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: outside what the optimizer and schedule take (lr >= 0, two "
            "betas in [0, 1), weight_decay >= 0, warmup_steps >= 0, total_steps > 0, "
            "min_lr_ratio in [0, 1])"
        )


class TrainingTask(pl.LightningModule):
    """Base LightningModule; `net` is the model built from `conf/model/net`.

    `data_task` and `data_layout` say which batches the task reads: the data module's `task`
    and `model_kind` follow them (`conf/data`, through `training.config.data_for_model`).
    """

    reports_perplexity = True
    data_task = "generative"
    data_layout = "staria"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerSettings,
        scheduler: SchedulerSettings,
        stage: dict | None = None,
        compile: bool = False,
        loss_chunk_tokens: int | None = None,
        vocabulary: Literal["full", "compact"] = "full",
    ):
        super().__init__()
        check_settings(optimizer, scheduler)
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.stage_schedule = build_stage_schedule(stage)
        self._stage_phase: int | None = None
        self._step_started: float | None = None
        self._compiled = False
        # `labelled` or `plain` (MidiDataModule.structure), from a loaded checkpoint.
        self.trained_structure: str | None = None

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        raise NotImplementedError

    def use_vocabulary(self, full_ids: Sequence[int]) -> None:
        """`vocabulary=compact`: the net keeps embedding and head rows for `full_ids` only (the
        ids its data uses; `models.xtransformers.use_compact_vocabulary`). Batches, losses
        and samples keep the full vocabulary's ids; checkpoints record `full_ids`."""
        use_compact_vocabulary(self.net, torch.as_tensor(full_ids), UNKNOWN_ID)

    def next_token_loss(self, batch: dict[str, torch.Tensor], *net_inputs: torch.Tensor):
        """Next-token cross entropy of `net(*net_inputs)` on `batch`'s tokens: from the full
        logits, or with `loss_chunk_tokens` from the hidden states and the net's `head`
        (`chunked_sequence_loss`: one chunk of logits at a time). A compact vocabulary's loss
        comes from its own rows' logits (the same value: the other ids' logits are -inf)."""
        chunk = self.hparams.get("loss_chunk_tokens")
        head = getattr(self.net, "head", None)
        compact = isinstance(head, CompactHead)
        if not chunk and not compact:
            return sequence_loss(self.net(*net_inputs), batch["tokens"], batch["loss_mask"])
        hidden = self.net(*net_inputs, return_embeddings=True)
        tokens = batch["tokens"]
        if compact:  # targets as rows of its weight; data ids are all among its rows
            tokens = torch.searchsorted(head.full_ids, tokens)
        chunk = chunk or tokens.numel()
        return chunked_sequence_loss(hidden, head.weight, tokens, batch["loss_mask"], chunk)

    def configure_model(self) -> None:
        """`compile=true` compiles the network in place (parameter names unchanged), once."""
        if self.hparams.compile and not self._compiled:
            self.net.compile()
            self._compiled = True

    def configure_optimizers(self):
        opt = self.hparams.optimizer
        if self.stage_schedule is None:
            groups = [{"params": list(self.net.parameters()), "lr": opt["lr"]}]
        else:
            groups = self.stage_schedule.param_groups(self.net, opt["lr"])
        optimizer = torch.optim.AdamW(
            groups, lr=opt["lr"], betas=tuple(opt["betas"]), weight_decay=opt["weight_decay"]
        )
        sched = self.hparams.scheduler
        factor = partial(
            warmup_cosine,
            warmup_steps=sched["warmup_steps"],
            total_steps=sched["total_steps"],
            min_lr_ratio=sched["min_lr_ratio"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def apply_stage(self) -> None:
        """Freeze/unfreeze for this step; a function of `global_step`, so resume restores it."""
        if self.stage_schedule is not None:
            self.stage_schedule.apply(self.net, self.global_step)
            self._stage_phase = self.stage_schedule.phase(self.global_step)

    def on_fit_start(self) -> None:
        self.apply_stage()

    def on_train_start(self) -> None:
        """A resumed run's optimizer and schedule take the current settings: the restored
        moments and step stay, while learning rates, betas, weight decay and the schedule's
        shape come from `optimizer`/`scheduler` (the same values unless a rerun changed them
        under `resume.apply_changes`)."""
        if self.global_step == 0:
            return
        optimizer = self.optimizers(use_pl_optimizer=False)
        scheduler = self.lr_schedulers()
        fresh = self.configure_optimizers()
        fresh_optimizer, fresh_scheduler = fresh["optimizer"], fresh["lr_scheduler"]["scheduler"]
        if len(fresh_optimizer.param_groups) != len(optimizer.param_groups):
            raise ValueError(
                f"the resumed optimizer has {len(optimizer.param_groups)} parameter groups, "
                f"these settings make {len(fresh_optimizer.param_groups)}: a stage change "
                "cannot apply to a resumed run; start a new run with init_from="
            )
        for group, new in zip(optimizer.param_groups, fresh_optimizer.param_groups, strict=True):
            group.update({key: value for key, value in new.items() if key != "params"})
        scheduler.base_lrs = list(fresh_scheduler.base_lrs)
        scheduler.lr_lambdas = fresh_scheduler.lr_lambdas
        for group, base_lr, factor in zip(
            optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Re-apply only when the schedule moves on; a resume restores `global_step` after
        `on_fit_start`, so its first batch re-applies too."""
        schedule = self.stage_schedule
        if schedule is not None and schedule.phase(self.global_step) != self._stage_phase:
            self.apply_stage()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        result = self.step_loss(batch)
        now = time.perf_counter()
        if self._step_started is not None:
            tokens = batch["token_mask"].sum() if "token_mask" in batch else result.count
            self.log("train/tokens_per_s", tokens / (now - self._step_started))
        self._step_started = now
        self.log("train/loss", result.loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        if self.reports_perplexity:
            self.log("train/perplexity", torch.exp(result.loss.detach()))
        return result.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def evaluation_loss(self, split: str, batch: dict[str, torch.Tensor]) -> StepLoss:
        """A validation or test batch's loss; a task that logs more metrics from the same forward
        pass overrides this rather than running the network twice."""
        return self.step_loss(batch)

    def _evaluate(self, split: str, batch: dict[str, torch.Tensor]) -> None:
        result = self.evaluation_loss(split, batch)
        self.log(f"{split}/loss", result.loss, prog_bar=split == "val", sync_dist=True)
        if self.reports_perplexity:
            self.log(f"{split}/perplexity", torch.exp(result.loss), sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every checkpoint is plain data, so it loads with `weights_only=True` (safe_loading).
        It records how the training pieces were laid out (`TRAINED_ON`: generation starts
        samples the same way)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        structure = getattr(datamodule, "structure", lambda: None)()
        if structure is not None:
            checkpoint[TRAINED_ON] = {"structure": structure}
        checkpoint.update(plain(dict(checkpoint)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_structure = checkpoint.get(TRAINED_ON, {}).get("structure")

    def init_from(self, path: str | Path, allow_pickle_runs_code: bool = False) -> None:
        """Initialise `net` from a Lightning checkpoint or a state-dict file; not a resume.

        Safetensors, or `torch.load` as data only unless `allow_pickle_runs_code`.
        """
        state = net_state(path, allow_pickle_runs_code, "init_from")
        load_weights(self.net, state, f"init_from={path}")


def net_state(
    path: str | Path, allow_pickle_runs_code: bool = False, what: str = ""
) -> dict[str, torch.Tensor]:
    """The network weights in a file: a Lightning checkpoint's `net.*` entries (prefix removed),
    or a state dict (safetensors, or `torch.load` as data only unless `allow_pickle_runs_code`).
    `InitWeightsError` naming `what` (the setting) and the file for anything else."""
    what = f"{what or 'weights'}={path}"
    path = Path(path)
    if not path.is_file():
        raise InitWeightsError(f"{what}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        if not allow_pickle_runs_code and not zipfile.is_zipfile(path):  # torch.save's format
            raise InitWeightsError(f"{what}: not a checkpoint or state dict (torch.save's zip)")
        state = safe_loading.load(path, allow_pickle_runs_code, map_location="cpu")
    except (OSError, EOFError, KeyError, RuntimeError, ValueError) as error:
        if isinstance(error, InitWeightsError):
            raise
        raise InitWeightsError(f"{what}: unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise InitWeightsError(f"{what}: holds a {type(state).__name__}, not a state dict")
    if "state_dict" not in state:
        return state
    return {
        key.removeprefix("net."): value
        for key, value in state["state_dict"].items()
        if key.startswith("net.")
    }


def load_weights(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    may_miss: Collection[str] = (),
) -> None:
    """Load `state` into `module`, every key and shape matching except the keys `may_miss`
    (left at their initial values); `InitWeightsError` naming `what` (the setting and file)
    and the keys at fault otherwise."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise InitWeightsError(f"{what}: {error}") from error
    missing = [key for key in result.missing_keys if key not in set(may_miss)]
    if missing or result.unexpected_keys:
        raise InitWeightsError(
            f"{what}: missing keys {missing[:10]}, unexpected keys {result.unexpected_keys[:10]}"
        )
