"""Stages A/B/C: exactly which parameters train, and frozen ones stay put through an AdamW step."""

import pytest
import torch

from staria.models import CrossAttendingDecoder, SnippetEncoder, StariaModel
from staria.training.stages import StageConfigError, StageSchedule

VOCAB = 61
TINY = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16}
DECODER_DEPTH = 4


def tiny_staria() -> StariaModel:
    torch.manual_seed(0)
    encoder = SnippetEncoder(VOCAB, max_seq_len=8, **TINY)
    decoder_shape = TINY | {"depth": DECODER_DEPTH}
    decoder = CrossAttendingDecoder(VOCAB, max_seq_len=32, adapter_dim=4, **decoder_shape)
    return StariaModel(encoder, decoder)


def trainable_names(model: StariaModel) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def block_of(name: str) -> int | None:
    """Decoder block of a parameter name (3 layers per block: self-attn, cross-attn, ff)."""
    prefix = "decoder.net.attn_layers.layers."
    return int(name.removeprefix(prefix).split(".")[0]) // 3 if name.startswith(prefix) else None


def is_norm(name: str) -> bool:
    return name.endswith("gamma")  # x-transformers' LayerNorm weight


def test_stage_a_trains_only_cross_attention_adapters_and_decoder_norms():
    model = tiny_staria()
    StageSchedule("A").apply(model, global_step=0)
    trainable = trainable_names(model)
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith("decoder.")
        and ("cross_attn" in name or ".adapter." in name or is_norm(name))
    }
    assert trainable == expected
    assert any("cross_attn_gate" in name for name in trainable)
    assert any(".adapter.up." in name for name in trainable)
    assert "decoder.net.attn_layers.final_norm.gamma" in trainable
    assert not any(name.startswith("encoder.") for name in trainable)
    assert "decoder.net.attn_layers.layers.0.1.to_q.weight" not in trainable


def test_stage_b_unfreezes_top_blocks_first_as_a_function_of_the_step():
    model = tiny_staria()
    schedule = StageSchedule("B", unfreeze_top_k=1, unfreeze_every_n_steps=10)
    stage_a = (StageSchedule("A").apply(model, 0), trainable_names(model))[1]

    def unfrozen_blocks(step: int) -> set[int]:
        schedule.apply(model, step)
        names = trainable_names(model) - stage_a
        assert not any(name.startswith("encoder.") or "emb" in name for name in names)
        assert "decoder.net.to_logits.weight" not in names
        return {block_of(name) for name in names}

    assert unfrozen_blocks(0) == {3}
    assert unfrozen_blocks(9) == {3}
    assert unfrozen_blocks(10) == {2, 3}
    assert unfrozen_blocks(35) == {0, 1, 2, 3}
    assert unfrozen_blocks(10_000) == {0, 1, 2, 3}
    # Resuming at step 10 gives the same state as getting there step by step.
    fresh = tiny_staria()
    schedule.apply(fresh, 10)
    assert trainable_names(fresh) == (schedule.apply(model, 10), trainable_names(model))[1]
    assert StageSchedule("A").unfrozen_blocks(4, 50) == 0


def test_stage_c_trains_everything_with_a_learning_rate_per_part():
    model = tiny_staria()
    schedule = StageSchedule.from_config(
        {"name": "C", "lr_scale": {"encoder": 0.1, "decoder": 0.3, "new": 1.0}}
    )
    schedule.apply(model, 0)
    assert trainable_names(model) == {name for name, _ in model.named_parameters()}
    groups = {group["name"]: group for group in schedule.param_groups(model, base_lr=1e-3)}
    assert {name: group["lr"] for name, group in groups.items()} == pytest.approx(
        {"encoder": 1e-4, "decoder": 3e-4, "new": 1e-3}
    )
    grouped = [id(p) for group in groups.values() for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    names = {id(p): name for name, p in model.named_parameters()}
    assert all(names[id(p)].startswith("encoder.") for p in groups["encoder"]["params"])
    assert all(
        "cross_attn" in names[id(p)] or "adapter" in names[id(p)] for p in groups["new"]["params"]
    )


def test_stage_a_groups_hold_only_what_stage_a_trains():
    model = tiny_staria()
    schedule = StageSchedule("A", lr_scale={"encoder": 0.1})
    groups = schedule.param_groups(model, base_lr=1e-3)
    assert {group["name"] for group in groups} == {"decoder", "new"}
    assert all(group["lr"] == 1e-3 for group in groups)
    schedule.apply(model, 0)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("schedule", [StageSchedule("A"), StageSchedule("B", 1, 100)])
def test_frozen_parameters_do_not_change_after_an_optimizer_step(schedule):
    model = tiny_staria()
    schedule.apply(model, global_step=0)
    optimizer = torch.optim.AdamW(schedule.param_groups(model, 1e-2), weight_decay=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    snippets = torch.randint(3, VOCAB, (2, 2, 8))
    tokens = torch.randint(3, VOCAB, (2, 12))
    logits = model(snippets, torch.ones_like(snippets, dtype=torch.bool), tokens, tokens > 0)
    torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
    ).backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None and torch.equal(parameter, before[name]), name
    # The gates open first: at zero they pass no gradient to the cross-attention behind them.
    assert all(gate.item() != 0.0 for gate in model.decoder.cross_attention_gates())


def test_bad_stage_settings_name_the_value():
    with pytest.raises(StageConfigError, match="'D'"):
        StageSchedule("D")
    with pytest.raises(StageConfigError, match="unfreeze_every_n_steps"):
        StageSchedule("B", unfreeze_top_k=1, unfreeze_every_n_steps=0)
    with pytest.raises(StageConfigError, match="embeddings"):
        StageSchedule("C", lr_scale={"embeddings": 0.1})
