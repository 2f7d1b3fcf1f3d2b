"""The comparison is fair by construction at both scales: one decoder trunk for every
generator, the same data and step budget, positions that hold the longest inputs."""

from dataclasses import astuple
from pathlib import Path

import hydra
import pytest
import torch

from staria.models.xtransformers import vocabulary_parameter_count
from staria.research.compare import PROTOCOLS
from staria.research.phases import train_config

GENERATORS = ("control", "baseline", "staria")


def configs(scale: str) -> dict:
    protocol = PROTOCOLS[scale]
    return {role: train_config(getattr(protocol, role), Path("unused")) for role in GENERATORS}


def trunk(net) -> dict:
    """The decoder trunk's shape: Staria's decoder, or the decoder-only net itself."""
    decoder = net.decoder if "decoder" in net else net
    return {key: decoder[key] for key in ("dim", "depth", "heads", "dim_head", "max_seq_len")}


@pytest.mark.parametrize("scale", sorted(PROTOCOLS))
def test_every_generator_has_the_same_decoder_trunk(scale):
    shapes = {role: trunk(cfg.model.net) for role, cfg in configs(scale).items()}
    assert shapes["control"] == shapes["baseline"] == shapes["staria"], shapes


@pytest.mark.parametrize("scale", sorted(PROTOCOLS))
def test_every_phase_sees_the_same_pieces_crops_batches_and_steps(scale):
    found = configs(scale)
    found["encoder"] = train_config(PROTOCOLS[scale].encoder, Path("unused"))
    shared = ("synthesis", "snippet_len", "max_snippets", "max_seq_len", "batch_size", "seed")
    reference = found["staria"]
    for role, cfg in found.items():
        for key in shared:
            assert cfg.data[key] == reference.data[key], (role, key)
        assert cfg.model.vocabulary == reference.model.vocabulary, role
    for role in GENERATORS:
        assert found[role].trainer.max_steps == reference.trainer.max_steps, role
        assert found[role].model.optimizer == reference.model.optimizer, role
    kinds = {role: found[role].data.model_kind for role in GENERATORS}
    assert kinds == {"control": "unconditional", "baseline": "baseline", "staria": "staria"}


@pytest.mark.parametrize("scale", sorted(PROTOCOLS))
def test_the_positions_hold_the_longest_inputs(scale):
    found = configs(scale)
    data = found["staria"].data
    longest_prompt = 2 + data.max_snippets * (data.snippet_len + 1)
    assert found["staria"].model.net.encoder.max_seq_len >= data.snippet_len + 1
    assert found["staria"].model.net.decoder.max_seq_len >= data.max_seq_len
    assert found["baseline"].model.net.max_seq_len >= data.max_seq_len + longest_prompt


def test_the_gpu_trunk_is_staria_full_and_the_split_of_its_parameters():
    counts = {}
    for role, cfg in configs("gpu").items():
        with torch.device("meta"):
            net = hydra.utils.instantiate(cfg.model.net)
        total = sum(p.numel() for p in net.parameters())
        counts[role] = (vocabulary_parameter_count(net), total)
    # 17,742 ids x 1,536 twice (embedding, untied head) before the compact map cuts them
    assert counts["control"][0] == counts["baseline"][0] == 2 * 17_742 * 1_536
    assert counts["baseline"][1] == 513_953_280
    assert counts["staria"][1] == 867_297_808  # staria_full: 4,096 decoder positions
    assert astuple(PROTOCOLS["gpu"])[0] == "compare_encoder_full"
