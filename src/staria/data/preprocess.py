"""MIDI folders -> a cached, split, memory-mapped token index (command `staria-data index`).

Work is cut into fixed chunks of the sorted file list, written as one shard file each, so a
rerun skips finished chunks and a SLURM array can split the chunks by `shard_index`/`num_shards`.
Files are tokenized one by one in isolated worker processes (`staria.data.isolation`): a file
that crashes, hangs or exhausts memory is one line in the skip report, never the run. A merge
step then drops duplicate content, assigns splits and writes one folder per split, renamed into
place only when complete. Runs on one cache folder take a lock per shard and for the merge, so
concurrent runs wait for each other instead of colliding. Layout: docs/data-format.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from staria.data.cache import COMPLETE_MARKER, NO_SECTION, IncompleteIndexError
from staria.data.isolation import ItemFailure, WorkerLimits, map_isolated
from staria.data.labels import SPLITS, PieceLabels, labels_path
from staria.data.sequences import TokenLayout
from staria.files import write_durably, write_json_atomic
from staria.tokenizer import MusicTokenizerWithStyle, PieceLimits, read_notes, scan_midi_files

INDEX_FORMAT_VERSION = 2
FILES_PER_WORKER = 64
CHUNK_SUFFIX = ".bin"  # a chunk's token and section ids (`_write_chunk`)
# The chunk files' layout, in the work folder's name: a shard of another version never reads
# or finishes this version's chunks (the finished index's format is INDEX_FORMAT_VERSION).
CHUNK_FORMAT_VERSION = 2


class UnsafeLegacyCacheError(PermissionError):
    """Refusal to unpickle a legacy cache without the flag that acknowledges pickle runs code."""


@dataclass(frozen=True)
class IndexSettings:
    """Everything that changes a cache's content; its hash (with the inputs) names the cache.

    `max_duration_s`, `max_tokens` and `crop` bound each piece (`staria.tokenizer.PieceLimits`).
    """

    mode: str = "real"
    name: str = "midi"
    limit: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    use_labels: bool = True
    max_duration_s: float = PieceLimits.max_duration_s
    max_tokens: int = PieceLimits.max_tokens
    crop: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} "
                "must lie in [0, 1)"
            )
        self.piece_limits  # noqa: B018 - validates the limits now, not in a worker

    @property
    def piece_limits(self) -> PieceLimits:
        return PieceLimits(self.max_duration_s, self.max_tokens, self.crop)


@dataclass
class IndexResult:
    """Where a run put the cache and how much work it did (0 tokenized files when reused)."""

    split_dirs: dict[str, Path]
    report_path: Path
    fingerprint: str
    reused: bool
    tokenized_files: int
    num_chunks: int
    counts: dict[str, int] = field(default_factory=dict)


def fingerprint(files: Sequence[Path], settings: IndexSettings) -> str:
    """Hash of the file list (paths, sizes, mtimes, labels) and settings: the cache's identity."""
    digest = hashlib.sha256(json.dumps([INDEX_FORMAT_VERSION, asdict(settings)]).encode())
    for path in files:
        try:
            stat = path.stat()
        except OSError:  # gone since the scan: its worker will say so in the report
            digest.update(os.fsencode(path) + b"\0gone\n")
            continue
        # os.fsencode: any file name, also one that is not valid UTF-8
        digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        label = labels_path(path)
        if settings.use_labels and label.is_file():
            digest.update(os.fsencode(label) + f"\0{label.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def cache_stem(settings: IndexSettings, key: str) -> str:
    return f"dataset_{settings.mode}_{settings.name}_limit{settings.limit}_{key}"


def split_of(sha256: str, settings: IndexSettings, label_split: str | None = None) -> str:
    """The split of a source file: its label's split if given, else a uniform draw from its hash.

    Hashing the content keeps the assignment stable under renames and identical on every node.
    """
    if label_split is not None:
        return label_split
    draw = int(sha256[:16], 16) / 2**64
    if draw < settings.test_fraction:
        return "test"
    if draw < settings.test_fraction + settings.val_fraction:
        return "val"
    return "train"


def _file_indexer(settings: IndexSettings) -> tuple[TokenLayout, bool]:
    """Per-worker state: lookup tables for the settings' piece limits, and whether to label."""
    return TokenLayout(MusicTokenizerWithStyle(settings.piece_limits)), settings.use_labels


def _index_file(
    indexer: tuple[TokenLayout, bool], path: str
) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Record, token ids (uint16) and section ids of one file (None: unlabelled, all
    `NO_SECTION`, so they need not cross the pipe); raises on any unusable input."""
    layout, use_labels = indexer
    data = Path(path).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    ids, notes, cropped = layout.tokenizer.ids_within_limits(read_notes(data), path)
    label_file = labels_path(Path(path))
    record = {"path": path, "sha256": sha256, "form": None, "style": None, "split": None}
    if cropped:
        record["cropped"] = cropped
    section_ids = None
    if use_labels and label_file.is_file():
        labels = PieceLabels.load(label_file)
        sequence = layout.labelled_sequence(ids, notes.start_ms / 1000.0, labels)
        record.update(form=labels.form, style=labels.style, split=labels.split)
        record["sections"] = [list(span) for span in sequence.sections]
        ids, section_ids = sequence.ids, sequence.section_ids
    record["num_tokens"] = len(ids)
    return record, ids.astype(np.uint16), section_ids


def _write_chunk(work_dir: Path, chunk_id: int, results: list[tuple]) -> None:
    """`chunk-<id>.bin` (every kept file's token ids as uint16, then their section ids as
    uint8, in file order) then `.json` (the records, whose `num_tokens` give the lengths; the
    chunk's completion marker), each renamed into place."""
    records = [record for record, _, _ in results]
    kept = [(ids, sections) for _, ids, sections in results if ids is not None]
    tokens = np.concatenate([np.empty(0, np.uint16), *(ids for ids, _ in kept)], dtype=np.uint16)
    section_ids = np.full(len(tokens), NO_SECTION, np.uint8)
    start = 0
    for ids, sections in kept:
        if sections is not None:
            section_ids[start : start + len(ids)] = sections
        start += len(ids)

    def write(handle: BinaryIO) -> None:
        handle.write(tokens.data)
        handle.write(section_ids.data)

    stem = _chunk_stem(work_dir, chunk_id)
    write_durably(stem.with_suffix(CHUNK_SUFFIX), write, unique=True)
    write_json_atomic(stem.with_suffix(".json"), records, unique=True, indent=None)


def _work_dir(cache_root: Path, stem: str) -> Path:
    """Where the shards of one index write their chunks until the merge."""
    return cache_root / f".work-v{CHUNK_FORMAT_VERSION}_{stem}"


def _chunk_stem(work_dir: Path, chunk_id: int) -> Path:
    """A chunk's files without their suffix: `chunk-<id>` in the work folder."""
    return work_dir / f"chunk-{chunk_id:06d}"


def _chunk_done(work_dir: Path, chunk_id: int) -> bool:
    """Whether the chunk's tokens and its completion marker are both in place."""
    stem = _chunk_stem(work_dir, chunk_id)
    return stem.with_suffix(".json").is_file() and stem.with_suffix(CHUNK_SUFFIX).is_file()


def _read_chunk(stem: Path, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's token ids and section ids, each one array over its kept files, which its
    records say hold `num_tokens`; `IncompleteIndexError` naming the file if it does not."""
    path = stem.with_suffix(CHUNK_SUFFIX)
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) != 3 * num_tokens:  # 2 bytes of token id and 1 of section id per token
        raise IncompleteIndexError(
            f"{path}: {len(raw)} bytes where its records need {3 * num_tokens}; delete the "
            "chunk (and its .json) and rerun `staria-data index` to tokenize it again"
        )
    return raw[: 2 * num_tokens].view(np.uint16), raw[2 * num_tokens :]


def _chunks(files: Sequence[Path], chunk_size: int) -> list[list[str]]:
    return [[str(p) for p in files[i : i + chunk_size]] for i in range(0, len(files), chunk_size)]


def _run_chunks(
    todo: list[tuple[int, list[str]]],
    work_dir: Path,
    settings: IndexSettings,
    workers: int,
    worker_limits: WorkerLimits,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Tokenize the chunks' files in isolated workers, writing each chunk once all its files
    are done (a failed file becomes an error record); returns the number of files done."""
    files = [(chunk_id, path) for chunk_id, paths in todo for path in paths]
    results: dict[int, dict[int, tuple]] = {chunk_id: {} for chunk_id, _ in todo}
    sizes = {chunk_id: len(paths) for chunk_id, paths in todo}
    done = 0
    outcomes = map_isolated(
        _index_file,
        [path for _, path in files],
        workers,
        worker_limits,
        setup=functools.partial(_file_indexer, settings),
    )
    with contextlib.closing(outcomes):
        for position, outcome in outcomes:
            chunk_id, path = files[position]
            if isinstance(outcome, ItemFailure):
                outcome = ({"path": path, "error": outcome.reason}, None, None)
            results[chunk_id][position] = outcome
            if len(results[chunk_id]) == sizes[chunk_id]:
                finished = results.pop(chunk_id)
                _write_chunk(work_dir, chunk_id, [finished[p] for p in sorted(finished)])
                done += sizes[chunk_id]
                if progress:
                    progress(sizes[chunk_id], len(files))
    return done


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing): concurrent holders wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_index(
    sources: Sequence[str | Path],
    cache_root: str | Path,
    settings: IndexSettings = IndexSettings(),
    workers: int | None = None,
    chunk_size: int = 64,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: Callable[[int, int], None] | None = None,
    worker_limits: WorkerLimits | None = None,
) -> IndexResult | None:
    """Index MIDI under `sources` into `cache_root`, reusing a complete cache of the same inputs.

    With `num_shards > 1` this process only tokenizes chunks `shard_index::num_shards` and
    returns None; `merge_index` (run once all shards finished) writes the splits. Each file
    gets at most `worker_limits` of time and memory; `workers` processes (default: all cores).
    `progress(files, total)` is called with 0 and the number of files to tokenize when the
    work starts, then with each finished chunk's file count.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} outside [0, num_shards={num_shards})")
    cache_root = Path(cache_root)
    files = scan_midi_files(sources, settings.limit)
    key = fingerprint(files, settings)
    stem = cache_stem(settings, key)
    chunks = _chunks(files, chunk_size)
    with exclusive_lock(cache_root / f".{stem}.shard-{shard_index}-of-{num_shards}.lock"):
        found = _complete_index(cache_root, stem, key)
        if found is not None:
            return found
        work_dir = _work_dir(cache_root, stem)
        work_dir.mkdir(parents=True, exist_ok=True)
        plan = {"chunk_size": chunk_size, "num_chunks": len(chunks)}
        write_json_atomic(work_dir / "plan.json", plan, unique=True)  # shards write it at once
        todo = [
            (chunk_id, paths)
            for chunk_id, paths in enumerate(chunks)
            if chunk_id % num_shards == shard_index and not _chunk_done(work_dir, chunk_id)
        ]
        # A worker costs about a CPU-second to start: one per FILES_PER_WORKER files at most.
        num_files = sum(len(paths) for _, paths in todo)
        workers = min(workers or os.cpu_count() or 1, -(-num_files // FILES_PER_WORKER))
        limits = worker_limits or WorkerLimits()
        if progress:
            progress(0, num_files)
        tokenized = _run_chunks(todo, work_dir, settings, workers, limits, progress)
        if num_shards > 1:
            return None
        # The key this run tokenized for, not a rescan: files that change meanwhile are next
        # run's inputs (their chunks hold what was read).
        result = _merge(cache_root, settings, key, len(files))
        result.tokenized_files = tokenized
        return result


def find_index(
    sources: Sequence[str | Path], cache_root: str | Path, settings: IndexSettings = IndexSettings()
) -> IndexResult | None:
    """The complete cache for these inputs and settings, or None: never builds anything."""
    files = scan_midi_files(sources, settings.limit)
    key = fingerprint(files, settings)
    return _complete_index(Path(cache_root), cache_stem(settings, key), key)


def _complete_index(cache_root: Path, stem: str, key: str) -> IndexResult | None:
    split_dirs = {split: cache_root / f"{stem}_{split}" for split in SPLITS}
    if not all((folder / COMPLETE_MARKER).is_file() for folder in split_dirs.values()):
        return None
    report_path = cache_root / f"{stem}_report.json"
    return IndexResult(split_dirs, report_path, key, True, 0, 0, _counts(split_dirs))


def merge_index(
    sources: Sequence[str | Path], cache_root: str | Path, settings: IndexSettings = IndexSettings()
) -> IndexResult:
    """Combine finished chunk shards into the split folders and the skip report.

    Streams chunk by chunk into preallocated memory-mapped arrays, so memory stays bounded by
    one chunk however many files there are.
    """
    files = scan_midi_files(sources, settings.limit)
    return _merge(Path(cache_root), settings, fingerprint(files, settings), len(files))


def _merge(cache_root: Path, settings: IndexSettings, key: str, num_files: int) -> IndexResult:
    """Merge the chunks of the cache named `key`, once, under the merge lock."""
    stem = cache_stem(settings, key)
    work_dir = _work_dir(cache_root, stem)
    split_dirs = {split: cache_root / f"{stem}_{split}" for split in SPLITS}
    report_path = cache_root / f"{stem}_report.json"
    with exclusive_lock(cache_root / f".{stem}.merge.lock"):
        found = _complete_index(cache_root, stem, key)
        if found is not None:  # a concurrent run merged while this one waited
            return found
        return _merge_chunks(work_dir, split_dirs, report_path, settings, key, num_files)


def _merge_chunks(
    work_dir: Path,
    split_dirs: dict[str, Path],
    report_path: Path,
    settings: IndexSettings,
    key: str,
    num_files: int,
) -> IndexResult:
    plan_path = work_dir / "plan.json"
    if not plan_path.is_file():
        raise IncompleteIndexError(
            f"{work_dir}: no shard has started for these inputs (files changed since the "
            "shards ran give another fingerprint); run `staria-data index`"
        )
    num_chunks = json.loads(plan_path.read_text())["num_chunks"]
    chunk_stems = [_chunk_stem(work_dir, i) for i in range(num_chunks)]
    missing = [s.name for i, s in enumerate(chunk_stems) if not _chunk_done(work_dir, i)]
    if missing:
        raise IncompleteIndexError(
            f"{work_dir}: {len(missing)} of {num_chunks} chunks unfinished (first: {missing[0]}); "
            "run the remaining shards of `staria-data index` first"
        )
    plan = _merge_plan(chunk_stems, settings)
    with _SplitWriters(split_dirs, plan, settings, key) as writers:
        for chunk_stem, kept, num_tokens in zip(
            chunk_stems, plan.kept_per_chunk, plan.tokens_per_chunk, strict=True
        ):
            if not kept:
                continue
            tokens, section_ids = _read_chunk(chunk_stem, num_tokens)
            for record, start, split in kept:
                end = start + record["num_tokens"]
                writers.append(split, record, tokens[start:end], section_ids[start:end])
    write_json_atomic(report_path, plan.report(key, settings, num_files))
    shutil.rmtree(work_dir)
    return IndexResult(split_dirs, report_path, key, False, 0, num_chunks, _counts(split_dirs))


@dataclass
class _MergePlan:
    """Which records each chunk contributes to which split, and what was left out and why."""

    kept_per_chunk: list[list[tuple[dict, int, str]]]
    tokens_per_split: dict[str, int]
    pieces_per_split: dict[str, int]
    labelled_splits: set[str]
    skipped: list[dict]
    duplicates: list[dict]
    cropped: list[dict]
    # tokens each chunk file holds (its kept and duplicate files), to check the file against
    tokens_per_chunk: list[int] = field(default_factory=list)

    def report(self, key: str, settings: IndexSettings, num_files: int) -> dict:
        return {
            "fingerprint": key,
            "settings": asdict(settings),
            "files_found": num_files,
            "pieces": self.pieces_per_split,
            "tokens": self.tokens_per_split,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "cropped": self.cropped,
        }


def _merge_plan(chunk_stems: Sequence[Path], settings: IndexSettings) -> _MergePlan:
    """First occurrence (in sorted path order) of each content hash wins; errors are reported."""
    seen: dict[str, str] = {}
    plan = _MergePlan([], dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0), set(), [], [], [])
    for chunk_stem in chunk_stems:
        kept, offset = [], 0
        for record in json.loads(chunk_stem.with_suffix(".json").read_text()):
            if "error" in record:
                plan.skipped.append({"path": record["path"], "reason": record["error"]})
                continue
            start, offset = offset, offset + record["num_tokens"]
            if record["sha256"] in seen:
                plan.duplicates.append(
                    {"path": record["path"], "duplicate_of": seen[record["sha256"]]}
                )
                continue
            seen[record["sha256"]] = record["path"]
            if "cropped" in record:
                plan.cropped.append({"path": record["path"], "reason": record["cropped"]})
            split = split_of(record["sha256"], settings, record["split"])
            kept.append((record, start, split))
            plan.tokens_per_split[split] += record["num_tokens"]
            plan.pieces_per_split[split] += 1
            if record["form"] is not None:
                plan.labelled_splits.add(split)
        plan.kept_per_chunk.append(kept)
        plan.tokens_per_chunk.append(offset)
    return plan


class _SplitWriters:
    """Fills each split's arrays in a temp folder; on success marks and renames it into place."""

    def __init__(
        self, split_dirs: dict[str, Path], plan: _MergePlan, settings: IndexSettings, key: str
    ) -> None:
        self.split_dirs, self.plan, self.settings, self.key = split_dirs, plan, settings, key
        self.temp_dirs = {
            s: d.with_name(f".tmp-{os.getpid()}-{d.name}") for s, d in split_dirs.items()
        }
        self.cursor = dict.fromkeys(SPLITS, 0)
        self.pieces: dict[str, list[dict]] = {split: [] for split in SPLITS}

    def __enter__(self) -> _SplitWriters:
        self.tokens, self.section_ids, self.offsets = {}, {}, {}
        for split, temp in self.temp_dirs.items():
            for stale in temp.parent.glob(f".tmp-*-{self.split_dirs[split].name}"):
                shutil.rmtree(stale)
            temp.mkdir(parents=True)
            total = self.plan.tokens_per_split[split]
            self.tokens[split] = _allocated_memmap(temp / "tokens.npy", np.uint16, total)
            if split in self.plan.labelled_splits:
                self.section_ids[split] = _allocated_memmap(
                    temp / "section_ids.npy", np.uint8, total
                )
            self.offsets[split] = [0]
        return self

    def append(self, split: str, record: dict, tokens: np.ndarray, section_ids: np.ndarray) -> None:
        start = self.cursor[split]
        self.cursor[split] = start + len(tokens)
        self.tokens[split][start : self.cursor[split]] = tokens
        if split in self.section_ids:
            self.section_ids[split][start : self.cursor[split]] = section_ids
        self.offsets[split].append(self.cursor[split])
        self.pieces[split].append(
            {k: record.get(k) for k in ("path", "sha256", "num_tokens", "form", "style")}
            | {"sections": record.get("sections", [])}
        )

    def __exit__(self, error_type: type | None, *_: object) -> None:
        try:
            if error_type is None:
                self._finish()
                return
        except BaseException:
            self._discard()
            raise
        self._discard()

    def _discard(self) -> None:
        for temp in self.temp_dirs.values():
            shutil.rmtree(temp, ignore_errors=True)

    def _finish(self) -> None:
        for split, temp in self.temp_dirs.items():
            self.tokens[split].flush()
            if split in self.section_ids:
                self.section_ids[split].flush()
            np.save(temp / "offsets.npy", np.asarray(self.offsets[split], dtype=np.int64))
            write_json_atomic(
                temp / "index.json",
                {
                    "format_version": INDEX_FORMAT_VERSION,
                    "split": split,
                    "fingerprint": self.key,
                    "settings": asdict(self.settings),
                    "num_pieces": len(self.pieces[split]),
                    "num_tokens": self.cursor[split],
                    "pieces": self.pieces[split],
                },
                indent=None,
            )
            (temp / COMPLETE_MARKER).write_text("complete\n")
        for split, temp in self.temp_dirs.items():
            final = self.split_dirs[split]
            if final.exists():
                shutil.rmtree(final)
            os.replace(temp, final)


def _allocated_memmap(path: Path, dtype: type, length: int) -> np.ndarray:
    """A writable .npy memmap whose blocks are reserved up front: a full disk raises here
    (`OSError` naming the file) instead of SIGBUS at some later write into the map."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(path)) from error
    return array


def _counts(split_dirs: dict[str, Path]) -> dict[str, int]:
    return {
        split: json.loads((folder / "index.json").read_text())["num_pieces"]
        for split, folder in split_dirs.items()
    }


def iter_legacy_path_list(
    pkl_path: str | Path, *, allow_pickle_legacy_cache_runs_code: bool = False
) -> Iterator[Path]:
    """MIDI paths from an original-project `.pkl` path list (a list, or a dict of split -> list).

    Unpickling executes whatever code the file names, so it is refused unless the caller sets
    the flag, which says so.
    """
    if not allow_pickle_legacy_cache_runs_code:
        raise UnsafeLegacyCacheError(
            f"{pkl_path}: loading a pickle runs arbitrary code; pass "
            "allow_pickle_legacy_cache_runs_code=True only for files you trust"
        )
    with open(pkl_path, "rb") as handle:
        content = pickle.load(handle)
    groups = content.values() if isinstance(content, dict) else [content]
    for group in groups:
        yield from (Path(path) for path in group)
