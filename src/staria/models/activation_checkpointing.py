"""Activation checkpointing for x-transformers layer stacks, which have none built in."""

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from x_transformers.x_transformers import AttentionLayers


def checkpoint_layers(layers: AttentionLayers) -> None:
    """Recompute each attention / feed-forward layer in the backward pass instead of storing it.

    torch's wrapper strips its own prefix from state dicts, so checkpoints load with or without
    it. Early stopping of the recomputation is off: it stops by raising an exception, which
    einx (inside x-transformers) re-raises as its own error.
    """
    for layer in layers.layers:
        layer[1] = checkpoint_wrapper(layer[1], early_stop=False)
