"""LightningModules, one per training objective; each turns a batch into a loss."""

from staria.training.tasks.baseline import BaselineTask, UnconditionalTask
from staria.training.tasks.classifier import ClassifierTask
from staria.training.tasks.contrastive import ContrastiveTask
from staria.training.tasks.staria import StariaTask

__all__ = ["BaselineTask", "ClassifierTask", "ContrastiveTask", "StariaTask", "UnconditionalTask"]
