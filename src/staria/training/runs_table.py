"""`staria-runs [FOLDER ...]`: the runs under a runs folder (default `runs`) or a run name's
folder (`runs/<name>`), one line each: its folder, status, step, best validation loss, and
the settings in which the listed runs differ (`run_identity.training_settings`); one table
per run name.

Status: `running` (a staria-train holds the folder), `finished`, `stopped` (it has a
checkpoint: the same command resumes it), `no checkpoint` (it never saved), `damaged
config.yaml` (its settings cannot be read).
"""

import argparse
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from staria.training.checkpointing import CheckpointHistory
from staria.training.resume import (
    FINISHED_MARKER,
    RESOLVED_CONFIG,
    RunInUseError,
    is_finished,
    load_stored_config,
    run_folder_lock,
)
from staria.training.run_identity import training_settings


@dataclass
class RunRow:
    """One run folder as the table shows it."""

    folder: Path
    status: str
    step: int | None
    best_val_loss: float | None
    settings: dict[str, Any] = field(default_factory=dict)


def _in_use(folder: Path) -> bool:
    try:
        with run_folder_lock(folder, create=False):
            return False
    except RunInUseError:
        return True


def read_run(folder: Path) -> RunRow:
    """The row of one run folder (one holding `config.yaml`), from its files only."""
    config = load_stored_config(folder / RESOLVED_CONFIG)
    if config is None:
        return RunRow(folder, "damaged config.yaml", None, None)
    # Its own checkpoints/ unless its config put them elsewhere in the folder: a copied run
    # folder still names the original's checkpoint folder, which is not its own.
    stored = Path(config.get("paths", {}).get("checkpoint_dir") or folder / "checkpoints")
    inside = stored.resolve() == folder or folder in stored.resolve().parents
    checkpoint_dir = stored if inside else folder / "checkpoints"
    written = CheckpointHistory(checkpoint_dir, config.get("run_id")).written().values()
    steps = [event["step"] for event in written if isinstance(event.get("step"), int)]
    losses = [event["value"] for event in written if isinstance(event.get("value"), int | float)]
    step = max(steps) if steps else None
    if _in_use(folder):
        status = "running"
    elif is_finished(folder):
        status = "finished"
        marker = load_stored_config(folder / FINISHED_MARKER) or {}
        step = marker.get("global_step", step)
    else:
        status = "stopped" if steps else "no checkpoint"
    best = min(losses) if losses else None
    return RunRow(folder, status, step, best, training_settings(config))


def find_runs(folders: Iterable[Path]) -> list[Path]:
    """Run folders (holding `config.yaml`) at or below each folder, in path order; nothing
    inside a run folder (W&B keeps a `config.yaml` of its own) and no link is followed."""
    found: dict[Path, None] = {}
    for folder in folders:
        for parent, children, files in os.walk(folder):
            if RESOLVED_CONFIG in files:
                found[Path(parent).resolve()] = None
                children.clear()
            children.sort()
    return list(found)


def varying(rows: list[RunRow]) -> list[str]:
    """The settings whose value is not the same in every row with settings (absent counts as
    a value); a run whose config is damaged has none and takes no part."""
    rows = [row for row in rows if row.settings]
    keys = sorted({key for row in rows for key in row.settings})
    return [k for k in keys if len({repr(row.settings.get(k, "<absent>")) for row in rows}) > 1]


def format_table(rows: list[RunRow], base: Path) -> str:
    """Aligned plain-text columns (readable piped to a file)."""
    differ = varying(rows)
    header = ["run", "status", "step", "best val/loss", *differ]
    lines = [header]
    for row in rows:
        try:
            name = str(row.folder.relative_to(base))
        except ValueError:
            name = str(row.folder)
        name = row.folder.name if name == "." else name
        loss = row.best_val_loss
        best = "-" if loss is None or math.isnan(loss) else f"{loss:.4f}"
        step = "-" if row.step is None else str(row.step)
        values = [str(row.settings.get(key, "-")) for key in differ]
        lines.append([name, row.status, step, best, *values])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="staria-runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[Path("runs")])
    args = parser.parse_args(argv)
    missing = [folder for folder in args.folders if not folder.is_dir()]
    if missing:
        what = "not a folder" if missing[0].exists() else "no such folder"
        print(f"staria-runs: {missing[0]}: {what}", file=sys.stderr)
        return 2
    runs = find_runs(args.folders)
    if not runs:
        print(f"no runs under {', '.join(map(str, args.folders))}")
        return 0
    base = args.folders[0].resolve() if len(args.folders) == 1 else Path.cwd()
    groups: dict[Path, list[RunRow]] = {}
    for run in runs:  # one table per run name (the folder above its runs): settings compare
        groups.setdefault(run.parent, []).append(read_run(run))
    tables = []
    for folder, rows in groups.items():
        heading = "" if len(groups) == 1 else f"== {_shown_path(folder, base)}\n"
        tables.append(heading + format_table(rows, folder if len(groups) > 1 else base))
    print("\n\n".join(tables))
    return 0


def _shown_path(folder: Path, base: Path) -> str:
    try:
        return str(folder.relative_to(base))
    except ValueError:
        return str(folder)


if __name__ == "__main__":
    sys.exit(main())
