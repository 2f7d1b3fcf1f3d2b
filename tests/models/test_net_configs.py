"""Every conf/model/net config instantiates the class it names; full sizes are built on meta."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from staria.models import (
    DecoderOnlyBaseline,
    SequenceClassifier,
    SnippetEncoder,
    StariaModel,
)
from staria.tokenizer.vocabulary import VOCAB_SIZE
from staria.training.config import compose_net

NET_DIR = Path(__file__).parents[2] / "conf" / "model" / "net"
KINDS = {
    "encoder": SnippetEncoder,
    "baseline": DecoderOnlyBaseline,
    "staria": StariaModel,
    "classifier": SequenceClassifier,
}
ARIA_VOCAB = 17_727


def build(name: str, *overrides: str) -> torch.nn.Module:
    config = compose_net(name, *overrides)
    if name.endswith("_full"):
        with torch.device("meta"):
            return instantiate(config)
    return instantiate(config)


@pytest.mark.parametrize("name", sorted(path.stem for path in NET_DIR.glob("*.yaml")))
def test_net_config_builds_its_model(name):
    model = build(name)
    assert isinstance(model, KINDS[name.split("_")[0]])
    vocab_sized = [p for p in model.parameters() if p.shape[0] == VOCAB_SIZE == 17_742]
    assert vocab_sized, "num_tokens must be the 17,742-token vocabulary"


def test_full_size_counts():
    def count(name):
        return sum(p.numel() for p in build(name).parameters())

    assert count("baseline_full") == 513_953_280
    assert count("baseline_aria_full") == pytest.approx(659e6, rel=0.01)
    staria = build("staria_full")
    assert staria.encoder.net.attn_layers.attn_dim_head * 8 == 1536
    assert len(staria.decoder.blocks()) == 16


def test_aria_config_loads_weights_and_keeps_staria_tokens(tmp_path):
    state = {"model.tok_embeddings.weight": torch.randn(ARIA_VOCAB, 64)}
    state["lm_head.weight"] = torch.randn(ARIA_VOCAB, 64)
    state["model.out_layer_norm.weight"] = torch.randn(64)
    state["model.out_layer_norm.bias"] = torch.randn(64)
    for i in range(2):
        p = f"model.encode_layers.{i}."
        state |= {
            p + "mixed_qkv.weight": torch.randn(192, 64),
            p + "att_proj_linear.weight": torch.randn(64, 64),
            p + "ff_gate_proj.weight": torch.randn(256, 64),
            p + "ff_up_proj.weight": torch.randn(256, 64),
            p + "ff_down_proj.weight": torch.randn(64, 256),
            p + "norm1.weight": torch.randn(64),
            p + "norm1.bias": torch.randn(64),
            p + "norm2.weight": torch.randn(64),
            p + "norm2.bias": torch.randn(64),
        }
    path = tmp_path / "aria.safetensors"
    save_file(state, path)
    staria = build("staria_aria_tiny", f"aria_weights={path}")
    embedding = staria.decoder.net.token_emb.emb.weight
    assert torch.equal(embedding[:ARIA_VOCAB], state["model.tok_embeddings.weight"])
    assert embedding.shape[0] == 17_742 and embedding[ARIA_VOCAB:].abs().sum() > 0
    head = staria.decoder.net.to_logits.weight
    assert torch.equal(head[:ARIA_VOCAB], state["lm_head.weight"])
    assert build("baseline_aria_tiny").net.to_logits.weight.shape == head.shape
