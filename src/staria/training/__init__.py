"""Training: LightningModule tasks, stages, checkpointing, the staria-train entrypoint."""
