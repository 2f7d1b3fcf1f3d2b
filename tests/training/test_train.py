"""The real `conf/` composed and shrunk (tiny nets, synthetic data, CPU), run through `train`."""

import json
import re

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from staria.paths import REPO_ROOT
from staria.training.checkpointing import HISTORY_FILE
from staria.training.config import ConfigValueError, MissingConfigValueError, compose_net
from staria.training.resume import FINISHED_MARKER, resume_point
from staria.training.train import train
from tests.harness import compose_config
from tests.training.runs import compose_train, preempt_at_step, smoke

PRESETS = sorted(p.stem for p in (REPO_ROOT / "experiments").glob("*.yaml"))
TINY_NET = {"staria": "staria_tiny", "baseline": "baseline_tiny", "contrastive": "encoder_tiny"}
TINY_NET |= {"classifier": "classifier_tiny", "unconditional": "baseline_tiny"}


pytestmark = pytest.mark.usefixtures("module_data_cache")


def preset_model(preset: str) -> str:
    cfg = compose_config("train", f"experiment={preset}", hydra_node=True)
    return cfg.hydra.runtime.choices["model"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_a_fast_dev_run(preset, tmp_path):
    model = preset_model(preset)
    # A preset's own data and trainer choices give way to CPU ones (compose_train shrinks).
    overrides = ("data=synthetic", "trainer=cpu", "+trainer.fast_dev_run=1")
    cfg = compose_train(tmp_path, f"experiment={preset}", *overrides)
    # The tiny net over whatever sizes the preset sets (compare_baseline_full sets its own).
    cfg.model.net = OmegaConf.merge(cfg.model.net, compose_net(TINY_NET[model]))
    trainer = train(cfg)
    assert trainer.global_step == 1
    assert sum(p.numel() for p in trainer.lightning_module.parameters()) < 10_000_000
    # fast_dev_run writes no checkpoint, as Lightning's own callback.
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_a_typo_in_an_override_names_the_key(tmp_path):
    with pytest.raises(ConfigCompositionException, match="max_step"):
        smoke(tmp_path, "trainer.max_step=3")
    with pytest.raises(ConfigCompositionException, match="unfreeze_every"):
        smoke(tmp_path, "stage.unfreeze_every=not-a-number")


def test_a_wrong_type_for_a_typed_key_names_it(tmp_path):
    with pytest.raises(ConfigCompositionException, match="unfreeze_top_k"):
        smoke(tmp_path, "stage.unfreeze_top_k=many")


@pytest.mark.parametrize("key", ["init_from", "paths.data_dir"])  # the latter is interpolated
def test_a_missing_required_value_names_the_key(tmp_path, key):
    cfg = smoke(tmp_path, f"{key}=???")
    with pytest.raises(MissingConfigValueError, match=re.escape(key)):
        train(cfg)


def final_weights(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.lightning_module.net.state_dict().items()}


def test_preempted_run_resumes_at_its_step_and_matches_an_uninterrupted_run(tmp_path):
    steps = ("trainer.max_steps=6", "callbacks.checkpointing.last_every_n_steps=100")
    straight = train(smoke(tmp_path / "straight", *steps))
    assert straight.global_step == 6

    run_dir = tmp_path / "preempted"
    cfg = smoke(run_dir, *steps)
    preempt_at_step(cfg, 2)
    stopped = train(cfg)
    assert stopped.global_step == 3
    assert not (run_dir / FINISHED_MARKER).exists()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt")  # plain data: weights_only
    assert last["global_step"] == 3
    assert last["optimizer_states"][0]["state"], "optimizer moments were checkpointed"

    resumed = train(smoke(run_dir, *steps))
    assert resumed.global_step == 6
    assert (run_dir / FINISHED_MARKER).exists()
    straight_weights, resumed_weights = final_weights(straight), final_weights(resumed)
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, msg=name)


def test_a_finished_run_is_not_trained_again(tmp_path):
    assert train(smoke(tmp_path)).global_step == 4
    assert train(smoke(tmp_path)) is None


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    train(smoke(tmp_path))
    checkpoints = tmp_path / "checkpoints"
    (tmp_path / FINISHED_MARKER).unlink()
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    point = resume_point(tmp_path, checkpoints)
    assert [s.path for s in point.skipped] == [last]
    assert point.checkpoint is not None and point.checkpoint.name.startswith("epoch0-step4")


def test_checkpoint_history_records_writes_and_top_k_removals(tmp_path):
    train(smoke(tmp_path, "trainer.max_steps=6"))
    events = json.loads((tmp_path / "checkpoints" / HISTORY_FILE).read_text())
    written = [e for e in events if e["event"] == "written"]
    removed = [e for e in events if e["event"] == "removed"]
    assert {e["step"] for e in written if e["path"].endswith("last.ckpt")} == {2, 4, 6}
    best = [e for e in written if e["metric"] == "val/loss"]
    assert [e["step"] for e in best] == [2, 4, 6]
    assert all(isinstance(e["value"], float) for e in best)
    assert len(removed) == 1 and removed[0]["path"] in {e["path"] for e in best}
    remaining = {p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")}
    assert len(remaining) == 3  # top-2 plus last.ckpt


def test_stage_b_initialises_from_stage_a_weights_without_resuming(tmp_path):
    stage_a = train(smoke(tmp_path / "a", "stage=A"))
    weights_a = final_weights(stage_a)
    cfg = smoke(
        tmp_path / "b",
        "stage=B",
        f"init_from={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=1",
        "model.optimizer.lr=0.0",
    )
    stage_b = train(cfg)
    assert stage_b.global_step == 1, "init_from starts at step 0, it does not resume step 4"
    for name, value in final_weights(stage_b).items():
        torch.testing.assert_close(value, weights_a[name], msg=name)


@pytest.mark.parametrize(
    ("model", "task", "layout"),
    [
        ("baseline", "generative", "baseline"),
        ("staria", "generative", "staria"),
        ("contrastive", "contrastive", "staria"),
        ("classifier", "classification", "staria"),
    ],
)
def test_the_model_group_decides_the_data_it_reads(tmp_path, model, task, layout):
    cfg = compose_train(tmp_path, f"model={model}")
    assert (cfg.data.task, cfg.data.model_kind) == (task, layout)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (("model=baseline", "data.model_kind=staria"), "data.model_kind=staria"),
        (("model=staria", "data.task=classification"), "data.task=classification"),
        (("model=staria", "data.snippet_len=300"), "data.snippet_len=300"),
    ],
)
def test_settings_that_contradict_the_model_are_refused_before_anything_is_built(
    tmp_path, overrides, named
):
    with pytest.raises(ConfigValueError, match=re.escape(named)):
        train(smoke(tmp_path, *overrides))
    assert not tmp_path.joinpath("config.yaml").exists()
