"""The cluster group composes into the real train.yaml: presets size the job from the trainer."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from staria.training.config import register_configs

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_train(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_local_is_the_default_and_keeps_hydra_basic_launcher():
    config = compose_train()
    assert config.hydra.runtime.choices.cluster == "local"
    assert config.hydra.launcher._target_.endswith("BasicLauncher")


def test_slurm_takes_nodes_and_tasks_from_the_trainer():
    config = compose_train("cluster=slurm", "trainer.num_nodes=3", "trainer.devices=2")
    launcher = config.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node) == (3, 2)
    assert launcher.max_num_timeout > 0


@pytest.mark.parametrize(
    ("sizes", "nodes", "gpus", "mem_gb"),
    [((), 4, 4, 256), (("trainer.num_nodes=2", "hydra.launcher.mem_gb=128"), 2, 4, 128)],
)
def test_slurm_gpu_requests_gpus_for_ddp(sizes, nodes, gpus, mem_gb):
    config = compose_train("cluster=slurm_gpu", *sizes)
    launcher = config.hydra.launcher
    assert (config.trainer.accelerator, config.trainer.strategy) == ("gpu", "ddp")
    assert (config.trainer.num_nodes, config.trainer.devices) == (nodes, gpus)
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (nodes, gpus, gpus)
    assert (launcher.mem_gb, launcher.timeout_min) == (mem_gb, 360)


def test_preset_job_shape_follows_trainer_overrides():
    config = compose_train(
        "cluster=slurm_gpu",
        "trainer.num_nodes=8",
        "trainer.devices=2",
        "hydra.launcher.max_num_timeout=7",
    )
    launcher = config.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (8, 2, 2)
    assert launcher.max_num_timeout == 7
