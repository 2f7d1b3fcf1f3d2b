"""Which settings make a run what it is, and the short signature that names its folder.

A run folder is `<runs_dir>/<name>/stage-<stage>-<signature>`: the signature is a hash of the
settings that change what is trained (everything but `RERUN_MAY_CHANGE` and locations), so a
sweep point with another learning rate is another run, and the same command finds its own run
again and resumes it (as Dora's experiment signatures do). `runs/<name>/stage-<stage>` is a
link to the newest such folder, for paths a person types.
"""

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

log = logging.getLogger(__name__)

# Settings a rerun may change (dotted paths): how it runs, records and prints, not what it
# trains; `hydra` is Hydra's own node, present while the run folder is being named. Keys
# whose name ends in "dir" are locations (they follow the working folder), never compared.
RERUN_MAY_CHANGE = (
    "hydra",
    "print_config",
    "train",
    "test",
    "allow_pickle_runs_code",
    "resume",
    "run_id",
    "paths",
    "callbacks",
    "logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
# Settings that change how fast a run goes, not what it computes, wherever they sit (leaf names):
# worker counts, pinned memory, flash attention, activation checkpointing, torch.compile.
RUNS_THE_SAME = (
    "num_workers",
    "index_workers",
    "persistent_workers",
    "pin_memory",
    "attn_flash",
    "activation_checkpointing",
    "compile",
)
SIGNATURE_LENGTH = 8
# Settings naming weight files a run starts from.
INIT_KEYS = ("init_from", "init_encoder_from", "init_decoder_from")


def training_settings(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """`dotted.key -> value` of every setting that changes what a run trains (not
    `RERUN_MAY_CHANGE`, `RUNS_THE_SAME` or locations), resolved, from a
    composed config (a `DictConfig`, resolved leaf by leaf, so the run folder's own keys are
    never touched) or a stored one (a dict). A required value never given reads `???`; a
    weights file (`INIT_KEYS`) that exists is its real path, links followed."""
    settings: dict[str, Any] = {}
    for key in config:
        full = f"{prefix}{key}"
        if full in RERUN_MAY_CHANGE or key in RUNS_THE_SAME or str(key).endswith("dir"):
            continue
        try:
            value = config[key]
        except MissingMandatoryValue:
            value = "???"
        if isinstance(value, Mapping):
            settings.update(training_settings(value, f"{full}."))
        else:
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            settings[full] = value
    for key in INIT_KEYS:
        if isinstance(settings.get(key), str) and os.path.exists(settings[key]):
            # the weights themselves: a link (runs/<name>/stage-A) that moves is another start
            settings[key] = os.path.realpath(settings[key])
    return settings


def settings_signature(config: Mapping) -> str:
    """The first `SIGNATURE_LENGTH` hex digits of the SHA-1 of `training_settings(config)`."""
    canonical = json.dumps(training_settings(config), sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:SIGNATURE_LENGTH]


def run_signature_resolver(*, _root_) -> str:
    """`${run_signature:}`: the signature of the config being composed (`conf/train.yaml`)."""
    return settings_signature(_root_)


def config_changes(stored: Mapping, current: Mapping) -> list[str]:
    """`key: stored -> current` for each training setting a rerun changed."""
    old, new = training_settings(stored), training_settings(current)
    return [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    ]


def link_newest(run_dir: Path) -> None:
    """Point `<name folder>/stage-<stage>` at `run_dir` when it is named
    `stage-<stage>-<signature>` (replaced atomically); a real folder of that name (a run from
    before signatures) is left alone, and so is a run folder named by hand."""
    run_dir = Path(run_dir)
    named = re.fullmatch(rf"(stage-.+)-[0-9a-f]{{{SIGNATURE_LENGTH}}}", run_dir.name)
    if named is None:
        return
    link = run_dir.parent / named.group(1)
    if link.exists() and not link.is_symlink():
        return
    temporary = link.with_name(f".{link.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, link)
