"""The cluster group composes into the real train.yaml: presets size the job from the trainer."""

import pytest

from tests.harness import compose_config


def compose_train(*overrides: str):
    return compose_config("train", *overrides, hydra_node=True)


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
