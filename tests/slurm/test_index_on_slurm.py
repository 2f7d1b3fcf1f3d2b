"""Sharded indexing as a SLURM job array plus a merge job, against a one-process build."""

import numpy as np
import pytest

from staria.data.cache import CachedSplit
from staria.data.preprocess import IndexSettings, build_index
from staria.data.slurm_index import cluster_launcher_settings, submit_index
from staria.paths import midi_dir

pytestmark = pytest.mark.slurm


def test_shards_as_an_array_then_merge_match_a_local_build(
    slurm_cluster, submitit_folder, tmp_path
):
    sources = [midi_dir()]
    if not sources[0].is_dir():
        pytest.skip(f"no shared MIDI folder at {sources[0]} (set STARIA_MIDI_DIR)")
    settings = IndexSettings(name="slurm", val_fraction=0.2, test_fraction=0.2)
    launcher = cluster_launcher_settings(
        [f"hydra.launcher.partition={slurm_cluster.partition}", "hydra.launcher.timeout_min=5"]
    )
    jobs = submit_index(
        sources,
        tmp_path / "sharded",
        settings,
        2,
        submitit_folder,
        launcher,
        workers=1,
        chunk_size=8,
    )

    assert [job.job_id for job in jobs.shards] == [f"{jobs.array_job_id}_{i}" for i in (0, 1)]
    sharded = slurm_cluster.result(jobs.merge, timeout_s=240)
    assert all(slurm_cluster.wait(job.job_id, 30) == "COMPLETED" for job in jobs.shards)
    local = build_index(sources, tmp_path / "local", settings, workers=1, chunk_size=8)
    assert (sharded.fingerprint, sharded.counts) == (local.fingerprint, local.counts)
    assert sum(sharded.counts.values()) > 0
    for split, folder in sharded.split_dirs.items():
        ours, theirs = CachedSplit(folder), CachedSplit(local.split_dirs[split])
        assert [p.sha256 for p in ours.pieces] == [p.sha256 for p in theirs.pieces]
        assert np.array_equal(ours.offsets, theirs.offsets)
        for piece in range(len(ours)):
            assert np.array_equal(ours.tokens(piece), theirs.tokens(piece))
