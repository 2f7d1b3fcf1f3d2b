"""Task behaviour that the training runs do not show: one forward pass per evaluation batch."""

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf
from training.runs import synthetic_datamodule

from staria.paths import REPO_ROOT
from staria.training.tasks import ClassifierTask


def test_classifier_validation_runs_the_network_once_per_batch(tmp_path):
    datamodule = synthetic_datamodule(
        tmp_path,
        task="classification",
        synthesis={"pieces_per_form": 4, "min_tokens": 128, "max_tokens": 256},
        max_seq_len=96,
        batch_size=2,
    )
    torch.manual_seed(0)
    net = hydra.utils.instantiate(OmegaConf.load(REPO_ROOT / "conf/model/net/classifier_tiny.yaml"))
    task = ClassifierTask(
        net,
        optimizer={"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        scheduler={"warmup_steps": 1, "total_steps": 1, "min_lr_ratio": 0.1},
    )
    forward_calls = []
    net.register_forward_hook(lambda module, args, output: forward_calls.append(output))
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=3,
    )
    results = trainer.validate(task, datamodule=datamodule)
    (metrics,) = results
    assert len(forward_calls) == 3
    assert {"val/loss", "val/form_accuracy", "val/style_accuracy"} <= set(metrics)
    assert 0.0 <= metrics["val/section_accuracy"] <= 1.0
    assert metrics["val/loss"] > 0.0
