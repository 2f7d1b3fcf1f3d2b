"""Safe by default: files from elsewhere never run code, and a wrong command changes nothing.

Payloads here are real pickles whose unpickling would create a marker file; each test checks
the marker is absent (and, for the opt-in, present: the opt-in really unpickles)."""

import contextlib
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from staria.generation.checkpoint import CheckpointError, load_checkpoint
from staria.training import safe_loading
from staria.training.safe_loading import UnsafeCheckpointError
from staria.training.train import ForeignCheckpointError, RunConfigChangedError, train
from tests.training.runs import smoke


class _Payload:
    """Unpickling this calls `Path.touch` on the marker: code from the file runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload_file(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file that `torch.load(weights_only=False)` opens, running the payload."""
    torch.save({"state_dict": {}, "global_step": 0, "hook": _Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished smoke run (4 steps): checkpoints, history, config.yaml."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(smoke(run_dir))
    return run_dir


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, files by content hash: byte-identical or not."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
        )
        for path in sorted(folder.rglob("*"))
    }


def test_own_checkpoints_load_as_data(finished_run):
    for path in (finished_run / "checkpoints").glob("*.ckpt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        checkpoint = torch.load(path, weights_only=True)  # plain torch.load, no allowlist
        assert checkpoint["global_step"] > 0 and checkpoint["state_dict"]
        assert isinstance(checkpoint["datamodule_hyper_parameters"]["synthesis"], dict)


def test_init_from_a_pickle_payload_is_refused_unless_opted_in(tmp_path):
    marker = tmp_path / "ran"
    payload = _payload_file(tmp_path / "weights.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"weights\.pt.*allow_pickle_runs_code=true"):
        train(smoke(tmp_path / "run", f"init_from={payload}"))
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    with pytest.raises(Exception):  # noqa: B017 - the opt-in unpickles: the payload runs
        train(smoke(tmp_path / "run2", f"init_from={payload}", "allow_pickle_runs_code=true"))
    assert marker.exists()


def test_a_stray_checkpoint_in_the_run_folder_is_never_opened(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(smoke(run_dir, "trainer.max_steps=2"))
    (run_dir / "finished.json").unlink()  # so the rerun looks for a checkpoint to resume
    marker = tmp_path / "ran"
    stray = _payload_file(run_dir / "checkpoints" / "zz-newest.ckpt", marker)
    trainer = train(smoke(run_dir, "trainer.max_steps=2"))
    assert not marker.exists() and stray.exists()
    assert trainer.global_step == 2  # resumed from the run's own last.ckpt
    assert "ignoring" in caplog.text and "zz-newest.ckpt" in caplog.text


def test_a_replaced_checkpoint_the_run_wrote_is_refused_not_unpickled(tmp_path):
    run_dir = tmp_path / "run"
    train(smoke(run_dir, "trainer.max_steps=2"))
    (run_dir / "finished.json").unlink()
    marker = tmp_path / "ran"
    _payload_file(run_dir / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"last\.ckpt"):
        train(smoke(run_dir, "trainer.max_steps=2"))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("model._target_", "builtins.exec"),
        ("model.net._target_", "torch.load"),
        ("model.net.encoder._target_", "os.system"),
        ("model.net.encoder._target_", "staria.models.decoder.torch.load"),  # through an import
        ("data._target_", "subprocess.run"),
    ],
)
def test_a_crafted_run_config_builds_nothing_but_stariass_classes(
    finished_run, tmp_path, key, target
):
    run_dir = tmp_path / "shared_run"
    shutil.copytree(finished_run, run_dir)
    config = OmegaConf.load(run_dir / "config.yaml")
    OmegaConf.update(config, key, target)
    OmegaConf.save(config, run_dir / "config.yaml")
    with pytest.raises(CheckpointError, match=re.escape(f"{key}={target!r}")):
        load_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def test_a_target_hidden_behind_an_interpolation_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "shared_run"
    shutil.copytree(finished_run, run_dir)
    text = (run_dir / "config.yaml").read_text()
    text += "payload:\n  _target_: torch.load\n  f: /nowhere.pkl\n"
    (run_dir / "config.yaml").write_text(text)
    config = OmegaConf.load(run_dir / "config.yaml")
    config.model.net.encoder = "${payload}"
    OmegaConf.save(config, run_dir / "config.yaml")
    with pytest.raises(CheckpointError, match=re.escape("model.net.encoder._target_='torch.load'")):
        load_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def test_a_lightning_hpc_checkpoint_in_the_run_folder_is_refused(tmp_path, monkeypatch):
    """Under SLURM, Lightning resumes from `hpc_ckpt_*.ckpt` in its root folder by itself."""
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "ran"
    _payload_file(run_dir / "hpc_ckpt_1.ckpt", marker)
    before = _snapshot(run_dir)
    with pytest.raises(ForeignCheckpointError, match=r"hpc_ckpt_1\.ckpt"):
        train(smoke(run_dir))
    assert _snapshot(run_dir) == before and not marker.exists()


def test_an_escaped_interpolation_cannot_come_alive_when_the_net_is_built(finished_run, tmp_path):
    """`\\${oc.create:{_target_: ...}}` resolves to text that Hydra would read as a live
    interpolation while building: refused, and nothing runs."""
    run_dir = tmp_path / "shared_run"
    shutil.copytree(finished_run, run_dir)
    marker = tmp_path / "ran"
    text = (run_dir / "config.yaml").read_text()
    payload = f"'\\${{oc.create:{{_target_: pathlib.Path.touch, _args_: [{marker}]}}}}'"
    text = text.replace(
        "activation_checkpointing: false", f"activation_checkpointing: {payload}", 1
    )
    (run_dir / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="holds an interpolation"):
        load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert not marker.exists()


@pytest.fixture
def unfinished_run(finished_run, tmp_path) -> Path:
    """A copy of the finished run that a rerun resumes (its checkpoints, no finished.json)."""
    run_dir = tmp_path / "unfinished"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "finished.json").unlink()
    return run_dir


@pytest.mark.parametrize(
    "escape",
    [
        "paths.checkpoint_dir={run}/elsewhere",  # a fresh checkpoint folder: no checkpoint found
        "corrupt",  # every checkpoint the history lists unloadable
    ],
)
def test_changed_settings_are_refused_however_resume_fares(unfinished_run, escape):
    overrides = ["model.optimizer.lr=0.1"]
    if escape == "corrupt":
        for path in (unfinished_run / "checkpoints").glob("*.ckpt"):
            path.write_bytes(b"not a checkpoint")
    else:
        overrides.append(escape.format(run=unfinished_run))
    before = _snapshot(unfinished_run)
    with pytest.raises(RunConfigChangedError, match=r"model\.optimizer\.lr: 0\.0003 -> 0\.1"):
        train(smoke(unfinished_run, *overrides))
    assert _snapshot(unfinished_run) == before


def test_a_refused_rerun_logs_nothing_into_the_run_folder(unfinished_run):
    shutil.copy(
        unfinished_run / "checkpoints" / "last.ckpt", unfinished_run / "checkpoints" / "x.ckpt"
    )
    before = _snapshot(unfinished_run)
    with pytest.raises(RunConfigChangedError):
        train(smoke(unfinished_run, "model.optimizer.lr=0.1"))
    assert _snapshot(unfinished_run) == before


def test_an_hpc_checkpoint_is_refused_on_resume_too(unfinished_run, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    shutil.copy(unfinished_run / "checkpoints" / "last.ckpt", unfinished_run / "hpc_ckpt_1.ckpt")
    before = _snapshot(unfinished_run)
    with pytest.raises(ForeignCheckpointError):
        train(smoke(unfinished_run, "test=true"))
    assert _snapshot(unfinished_run) == before


def test_an_older_pickled_checkpoint_needs_the_opt_in(finished_run, tmp_path):
    """A checkpoint holding config objects (as Staria's were) is refused with the way out."""
    run_dir = tmp_path / "old_run"
    shutil.copytree(finished_run, run_dir)
    path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = safe_loading.load(path)
    checkpoint["hyper_parameters"]["optimizer"] = OmegaConf.create(
        checkpoint["hyper_parameters"]["optimizer"]
    )
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle_runs_code=true"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_pickle_runs_code=True).task.global_step >= 0


def test_a_typo_in_the_experiment_is_an_error_listing_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"experiment/smok(.|\n)*smoke"):
        smoke(tmp_path, "experiment=smok")


# Overrides a new user types wrong; each must fail naming its key and value.
WRONG_OVERRIDES = [
    "trainer.max_steps=abc",
    "model.optimizer.lr=fast",
    "data.batch_size=0",
    "+trainer.foo=1",
    "model.net.decoder.depth=3",
    "trainer.precision=banana",
    "model.scheduler.warmup_steps=soon",
    "data.snippet_len=-4",
    "+model.optimizer.momentum=0.9",
    "callbacks.checkpointing.save_top_k=two",
    "model.compile=maybe",
    "seed=abc",
    "experiment=smok",
    "init_from=/nowhere/weights.pt",
    "callbacks.preemption.signals=[SIGFOO]",
    "callbacks.checkpointing.last_every_n_steps=-5",
    "model.optimizer.lr=-1",
    "model.optimizer.betas=[0.9]",
    "model.scheduler.min_lr_ratio=nan",
]


def _fails_leaving_folder_unchanged(run_dir: Path, override: str) -> str:
    """Run `override` in `run_dir`; the error's text (the command must fail)."""
    before = _snapshot(run_dir) if run_dir.exists() else None
    try:
        train(smoke(run_dir, override))
    except Exception as error:  # compose-time and run-time refusals alike
        message = str(error)
    else:
        raise AssertionError(f"{override} was accepted")
    after = _snapshot(run_dir) if run_dir.exists() else None
    assert after == before, f"{override} changed the run folder"
    return " ".join(message.split())


def _names_key_and_value(message: str, override: str) -> bool:
    key, value = override.lstrip("+").split("=", 1)
    leaf = key.rsplit(".", 1)[-1]
    return (key in message or (leaf in message and key.split(".")[0] in message)) and (
        value.strip("/[]") in message
    )


@pytest.mark.parametrize("override", WRONG_OVERRIDES)
def test_a_wrong_override_on_a_run_names_key_and_value_and_changes_nothing(finished_run, override):
    message = _fails_leaving_folder_unchanged(finished_run, override)
    assert _names_key_and_value(message, override), message


@pytest.mark.parametrize(
    "override", [o for o in WRONG_OVERRIDES if not o.startswith(("model.net", "init_from"))]
)
def test_a_wrong_override_on_a_new_run_makes_no_run_folder(tmp_path, override):
    message = _fails_leaving_folder_unchanged(tmp_path / "new_run", override)
    assert not (tmp_path / "new_run").exists()
    assert _names_key_and_value(message, override), message


def _leaves(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        value = node._get_node(key)
        full = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            keys += _leaves(value, f"{full}.")
        elif not str(key).startswith("_") and isinstance(value._value(), bool | int | float):
            keys.append(full)
    return keys


LEAVES = sorted(
    key
    for key in _leaves(
        OmegaConf.load(Path(__file__).parents[2] / "conf/trainer/cpu.yaml"), "trainer."
    )
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(
        [
            *LEAVES,
            "model.optimizer.lr",
            "model.scheduler.warmup_steps",
            "data.batch_size",
            "data.max_seq_len",
            "data.snippet_len",
            "stage.unfreeze_top_k",
            "seed",
            "callbacks.checkpointing.last_every_n_steps",
            "model.net.encoder.depth",
        ]
    ),
    value=st.one_of(
        st.sampled_from(["abc", "-1", "0.5.5", "[1,2]", "{a:1}", "null", "''", "1e999"]),
        st.integers(-10, -1).map(str),
    ),
)
def test_random_wrong_overrides_never_change_a_run_folder(finished_run, key, value):
    before = _snapshot(finished_run)
    with contextlib.suppress(Exception):  # refused at composition, validation or resume
        train(smoke(finished_run, f"{key}={value}"))
    assert _snapshot(finished_run) == before, f"{key}={value} changed the run folder"
