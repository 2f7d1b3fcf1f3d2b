"""A briefly trained comparison classifier, shared by the tests of this folder."""

import pytest

from staria.research.phases import last_checkpoint, run_train_phase
from tests.research.tiny import TINY_TRAINING


@pytest.fixture(scope="package")
def research_cache(tmp_path_factory):
    """Keep the synthetic pieces and indexes of these tests out of the repository's cache."""
    folder = tmp_path_factory.mktemp("research_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STARIA_DATA_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="package")
def classifier_run(research_cache, tmp_path_factory):
    """Run folder of a 3-step `experiment=compare_classifier` run."""
    run_dir = tmp_path_factory.mktemp("runs") / "classifier"
    result = run_train_phase("classifier", "compare_classifier", run_dir, TINY_TRAINING)
    assert not result.skipped
    assert last_checkpoint(run_dir).is_file()
    return run_dir
