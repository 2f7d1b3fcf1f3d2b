"""`staria-data`: synthesise form-labelled pieces, or index MIDI folders into a split cache."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from staria.data.isolation import WorkerLimits
from staria.data.labels import SYNTHETIC_SOURCES
from staria.data.preprocess import (
    IndexResult,
    IndexSettings,
    build_index,
    iter_legacy_path_list,
    merge_index,
)
from staria.data.slurm_index import cluster_launcher_settings, submit_index
from staria.data.synthetic import SynthesisConfig, synthesize


def _add_typed(
    parser: argparse.ArgumentParser, options: tuple[tuple[str, object, str], ...]
) -> None:
    """`(--flag, default, help)` options, each typed by its default."""
    for flag, default, help_text in options:
        parser.add_argument(flag, type=type(default), default=default, help=help_text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="staria-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write form-labelled synthetic pieces")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--forms", nargs="+", default=None)
    synth.add_argument("--source", choices=SYNTHETIC_SOURCES, default=SynthesisConfig.source)
    synth.add_argument("--source-dirs", nargs="*", type=Path, default=[])
    _add_typed(
        synth,
        (
            ("--pieces-per-form", SynthesisConfig.pieces_per_form, "pieces of each form"),
            ("--seed", SynthesisConfig.seed, "the same seed writes byte-identical files"),
            ("--min-tokens", SynthesisConfig.min_tokens, "shortest labelled sequence"),
            ("--max-tokens", SynthesisConfig.max_tokens, "longest labelled sequence"),
            ("--val-fraction", SynthesisConfig.val_fraction, "pieces of each form in val"),
            ("--test-fraction", SynthesisConfig.test_fraction, "pieces of each form in test"),
        ),
    )

    for name, help_text in (
        ("index", "tokenize MIDI folders into a cached, split index"),
        ("merge", "merge the finished shards of a sharded `index` run"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("sources", nargs="*", type=Path, help="folders or MIDI files")
        command.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
        command.add_argument("--mode", choices=("real", "synthetic"), default="real")
        command.add_argument("--no-labels", action="store_true", help="ignore <name>.json labels")
        command.add_argument(
            "--crop",
            action="store_true",
            help="crop a piece over a limit to the notes that fit instead of skipping it",
        )
        _add_typed(
            command,
            (
                ("--name", "midi", "the data set's name in the cache"),
                ("--limit", 0, "first N files; 0 = all"),
                ("--val-fraction", 0.05, "pieces in val"),
                ("--test-fraction", 0.05, "pieces in test"),
                (
                    "--max-duration-s",
                    IndexSettings.max_duration_s,
                    "longest piece, first to last onset (default: 4 h); longer ones are skipped",
                ),
                (
                    "--max-tokens",
                    IndexSettings.max_tokens,
                    "most tokens of one piece (default: 1,000,000); longer ones are skipped",
                ),
            ),
        )
        command.add_argument(
            "--legacy-pickle-list",
            type=Path,
            help="also index the paths of an original-project .pkl path list",
        )
        command.add_argument(
            "--allow-pickle-legacy-cache-runs-code",
            action="store_true",
            help="required with --legacy-pickle-list: unpickling executes code from the file",
        )
        if name == "index":
            _add_index_run_options(command)
    return parser


def _add_index_run_options(command: argparse.ArgumentParser) -> None:
    """How `index` runs: workers, per-file limits, sharding, SLURM."""
    command.add_argument("--workers", type=int, default=None, help="default: all cores")
    _add_typed(
        command,
        (
            ("--chunk-size", 64, "files per worker task"),
            (
                "--file-timeout-s",
                WorkerLimits.timeout_s,
                "a file still being read after this long is skipped (default: 300)",
            ),
            (
                "--file-memory-mib",
                WorkerLimits.memory_mib,
                "memory one file may take in its worker, MiB (default: 8192)",
            ),
            ("--shard-index", 0, "this process's shard"),
            ("--num-shards", 1, "shards in all; `merge` joins them"),
            (
                "--slurm-shards",
                0,
                "submit this many shards as a SLURM job array, then a merge job",
            ),
            ("--slurm-folder", Path("slurm_index"), "where submitit writes its logs"),
        ),
    )
    command.add_argument(
        "--slurm-set",
        action="append",
        default=[],
        metavar="hydra.launcher.KEY=VALUE",
        help="override a conf/cluster/slurm.yaml setting (partition, timeout_min, ...)",
    )


def _sources(args: argparse.Namespace) -> list[Path]:
    sources = list(args.sources)
    if args.legacy_pickle_list:
        sources += iter_legacy_path_list(
            args.legacy_pickle_list,
            allow_pickle_legacy_cache_runs_code=args.allow_pickle_legacy_cache_runs_code,
        )
    if not sources:
        raise SystemExit("staria-data: give MIDI folders/files or --legacy-pickle-list")
    return sources


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        _run(args, Console())
    except FileNotFoundError as error:
        raise SystemExit(f"staria-data: {error}") from error
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SystemExit(
            f"staria-data: {error.strerror} while writing {error.filename}; nothing was left "
            "half-written under a final name: free space and rerun (finished chunks are reused)"
        ) from error


def _run(args: argparse.Namespace, console: Console) -> None:
    if args.command == "synth":
        config = SynthesisConfig(
            pieces_per_form=args.pieces_per_form,
            forms=tuple(args.forms) if args.forms else SynthesisConfig.forms,
            seed=args.seed,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
            source=args.source,
            source_dirs=tuple(args.source_dirs),
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
        )
        written = synthesize(config, args.out_dir)
        console.print(f"wrote {len(written)} pieces (MIDI + labels JSON) under {args.out_dir}")
        return
    sources = _sources(args)
    settings = IndexSettings(
        args.mode,
        args.name,
        args.limit,
        args.val_fraction,
        args.test_fraction,
        use_labels=not args.no_labels,
        max_duration_s=args.max_duration_s,
        max_tokens=args.max_tokens,
        crop=args.crop,
    )
    if args.command == "merge":
        result = merge_index(sources, args.cache_dir, settings)
    elif args.slurm_shards:
        jobs = submit_index(
            sources,
            args.cache_dir,
            settings,
            args.slurm_shards,
            args.slurm_folder,
            cluster_launcher_settings(args.slurm_set),
            workers=args.workers,
            chunk_size=args.chunk_size,
        )
        console.print(
            f"submitted {len(jobs.shards)} shards as SLURM array {jobs.array_job_id}, "
            f"merge job {jobs.merge.job_id} after them; logs in {args.slurm_folder}"
        )
        return
    else:
        with Progress(console=console) as progress:
            task = progress.add_task("tokenizing", total=None)
            result = build_index(
                sources,
                args.cache_dir,
                settings,
                workers=args.workers,
                chunk_size=args.chunk_size,
                shard_index=args.shard_index,
                num_shards=args.num_shards,
                progress=lambda count, total: progress.update(task, total=total, advance=count),
                worker_limits=WorkerLimits(args.file_timeout_s, args.file_memory_mib),
            )
        if result is None:
            console.print(
                f"shard {args.shard_index}/{args.num_shards} done in {args.cache_dir}; "
                "run `staria-data merge` with the same arguments once all shards finished"
            )
            return
    _print_summary(console, result, args.cache_dir)


def _print_summary(console: Console, result: IndexResult, cache_dir: Path) -> None:
    """Pieces per split, then how many files were skipped, duplicated and cropped, and where
    the report lists each one with its reason."""
    verb = "reused" if result.reused else "wrote"
    console.print(f"{verb} index {result.fingerprint} in {cache_dir}:", markup=False)
    for split, folder in result.split_dirs.items():
        console.print(f"  {split}: {result.counts[split]} pieces -> {folder}", markup=False)
    report = json.loads(result.report_path.read_text())
    console.print(
        f"  {sum(result.counts.values())} of {report['files_found']} files indexed, "
        f"{len(report['skipped'])} skipped, {len(report['duplicates'])} duplicates, "
        f"{len(report.get('cropped', []))} cropped; each with its reason in {result.report_path}",
        highlight=False,
        markup=False,
    )
