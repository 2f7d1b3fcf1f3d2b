"""What the entrypoints print: known third-party noise filtered out, once per process.

Each filter names the exact message it drops, so anything new still shows. Dropped: Lightning's
hints that do not apply to how Staria runs it (GPU/TPU availability lines, the `srun` hint, the
LitLogger tip, the `weights_only` default, the "`Trainer.fit` stopped" line that the run's own
summary repeats) and deprecation warnings inside torchdata and Lightning that a user cannot act
on.
"""

import logging
import re
import warnings

WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"'set_vital' is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`torch.jit.script` is deprecated",
)
LOG_LINES = re.compile(
    r"^(GPU available: |TPU available: |💡 Tip: |`weights_only` was not set|"
    r"`Trainer.fit` stopped: )"
)
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)


class KnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not LOG_LINES.match(record.getMessage())


def quiet_known_noise() -> None:
    """Install the filters (idempotent)."""
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{message}")
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoise) for f in logger.filters):
            logger.addFilter(KnownNoise())
