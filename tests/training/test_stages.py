"""Stages A/B/C: exactly which parameters train, and frozen ones stay put through an AdamW step."""

import copy as copy_module
import pickle

import pytest
import torch

from staria.models import StariaModel
from staria.tokenizer import MusicTokenizerWithStyle
from staria.training.stages import StageConfigError, StageSchedule, staria_new_token_ids
from tests.harness import tiny_net

VOCAB = MusicTokenizerWithStyle().vocab_size()
TOKEN_ROWS = {"decoder.net.token_emb.emb.weight", "decoder.net.to_logits.weight"}
DECODER_DEPTH = 4


def tiny_staria() -> StariaModel:
    decoder = {"max_seq_len": 32, "adapter_dim": 4, "depth": DECODER_DEPTH}
    return tiny_net(vocab=VOCAB, encoder={"max_seq_len": 8}, decoder=decoder)


def trainable_names(model: StariaModel) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def block_of(name: str) -> int | None:
    """Decoder block of a parameter name (3 layers per block: self-attn, cross-attn, ff)."""
    prefix = "decoder.net.attn_layers.layers."
    return int(name.removeprefix(prefix).split(".")[0]) // 3 if name.startswith(prefix) else None


def is_norm(name: str) -> bool:
    return name.endswith("gamma")  # x-transformers' LayerNorm weight


def test_staria_adds_fifteen_tokens_at_the_end_of_the_vocabulary():
    tokenizer = MusicTokenizerWithStyle()
    assert staria_new_token_ids() == tuple(range(VOCAB - 15, VOCAB))
    decoded = tokenizer.decode(list(staria_new_token_ids()))
    sections = [tokenizer.section_token(letter) for letter in "ABCD"]
    assert decoded[:6] == [*sections, tokenizer.prompt_start, tokenizer.prompt_end]
    forms = ("A", "AB", "ABC", "ABA", "ABAB", "ABAC", "ABCA", "ABCB", "ABCD")
    assert decoded[6:] == [tokenizer.form_token(form) for form in forms]


@pytest.mark.parametrize("train_new_token_rows", [True, False])
def test_stage_a_trains_only_cross_attention_adapters_and_decoder_norms(train_new_token_rows):
    model = tiny_staria()
    StageSchedule("A", train_new_token_rows=train_new_token_rows).apply(model, global_step=0)
    trainable = trainable_names(model)
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith("decoder.")
        and ("cross_attn" in name or ".adapter." in name or is_norm(name))
    }
    assert trainable == expected | (TOKEN_ROWS if train_new_token_rows else set())
    assert any("cross_attn_gate" in name for name in trainable)
    assert any(".adapter.up." in name for name in trainable)
    assert "decoder.net.attn_layers.final_norm.gamma" in trainable
    assert not any(name.startswith("encoder.") for name in trainable)
    assert "decoder.net.attn_layers.layers.0.1.to_q.weight" not in trainable


def test_stage_b_unfreezes_top_blocks_first_as_a_function_of_the_step():
    model = tiny_staria()
    schedule = StageSchedule("B", unfreeze_top_k=1, unfreeze_every_n_steps=10)
    stage_a = (StageSchedule("A").apply(model, 0), trainable_names(model))[1]
    assert stage_a >= TOKEN_ROWS  # row-masked: see the optimizer-step test

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
    assert {group["name"] for group in groups} == {"decoder", "new", "new_tokens"}
    assert all(group["lr"] == 1e-3 for group in groups)
    (token_rows,) = [group for group in groups if group["name"] == "new_tokens"]
    assert token_rows["weight_decay"] == 0.0 and len(token_rows["params"]) == 2
    schedule.apply(model, 0)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "schedule",
    [
        StageSchedule("A"),
        StageSchedule("B", 1, 100),
        StageSchedule("A", train_new_token_rows=False),
    ],
    ids=["A", "B", "A-without-token-rows"],
)
def test_frozen_parameters_do_not_change_after_optimizer_steps(schedule):
    model = tiny_staria()
    schedule.apply(model, global_step=0)
    optimizer = torch.optim.AdamW(schedule.param_groups(model, 1e-2), weight_decay=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    new_ids = torch.tensor(staria_new_token_ids())
    snippets = torch.randint(3, VOCAB, (2, 2, 8))
    # Every new token is an input whose prediction counts (never last), so every new row moves.
    new_inputs = torch.cat([new_ids, torch.tensor([3])]).reshape(2, 8)
    tokens = torch.cat([torch.randint(3, VOCAB, (2, 12)), new_inputs, torch.full((2, 1), 3)], 1)
    for _ in range(2):  # the second step also has AdamW moments from the first
        optimizer.zero_grad()
        logits = model(snippets, torch.ones_like(snippets, dtype=torch.bool), tokens, tokens > 0)
        torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
        ).backward()
        optimizer.step()
    old_rows = torch.ones(VOCAB, dtype=torch.bool)
    old_rows[new_ids] = False
    for name, parameter in model.named_parameters():
        if name in TOKEN_ROWS and schedule.train_new_token_rows:
            assert torch.equal(parameter[old_rows], before[name][old_rows]), name
            assert (parameter[~old_rows] != before[name][~old_rows]).any(dim=1).all(), name
        elif parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None and torch.equal(parameter, before[name]), name
    # The gates open first: at zero they pass no gradient to the cross-attention behind them.
    assert all(gate.item() != 0.0 for gate in model.decoder.cross_attention_gates())


def test_stage_c_trains_every_row_of_the_embedding_and_head():
    model = tiny_staria()
    StageSchedule("A").apply(model, 0)
    StageSchedule("C").apply(model, 0)  # a model going on from stage A to C loses the mask
    tokens = torch.randint(3, VOCAB, (2, 12))
    snippets = torch.randint(3, VOCAB, (2, 2, 8))
    logits = model(snippets, torch.ones_like(snippets, dtype=torch.bool), tokens, tokens > 0)
    logits.sum().backward()
    head_grad = model.decoder.net.to_logits.weight.grad
    assert (head_grad[: VOCAB - 15] != 0).any()


def head_gradient(model: StariaModel) -> torch.Tensor:
    torch.manual_seed(1)
    tokens = torch.randint(3, VOCAB, (2, 12))
    snippets = torch.randint(3, VOCAB, (2, 2, 8))
    model.zero_grad()
    logits = model(snippets, torch.ones_like(snippets, dtype=torch.bool), tokens, tokens > 0)
    logits.sum().backward()
    return model.decoder.net.to_logits.weight.grad


@pytest.mark.parametrize("copy", ["deepcopy", "pickle"])
def test_a_copied_model_gets_its_own_row_mask_once(copy):
    """A copy (deepcopy, or the unpickled model of a DDP-spawned process) carries no hook:
    stage A masks it anew, once, and reapplying the stage every step adds no second hook."""
    model = tiny_staria()
    StageSchedule("A").apply(model, 0)
    twin = copy_module.deepcopy(model) if copy == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert (head_gradient(twin)[: VOCAB - 15] != 0).any()  # no hook came with the copy
    for step in range(3):
        StageSchedule("A").apply(twin, step)
    head = twin.decoder.net.to_logits.weight
    assert len(head._backward_hooks) == 1
    grad = head_gradient(twin)
    assert (grad[: VOCAB - 15] == 0).all() and (grad[VOCAB - 15 :] != 0).any()


def test_bad_stage_settings_name_the_value():
    with pytest.raises(StageConfigError, match="'D'"):
        StageSchedule("D")
    with pytest.raises(StageConfigError, match="unfreeze_every_n_steps"):
        StageSchedule("B", unfreeze_top_k=1, unfreeze_every_n_steps=0)
    with pytest.raises(StageConfigError, match="embeddings"):
        StageSchedule("C", lr_scale={"embeddings": 0.1})
    decoder = {"max_seq_len": 32, "adapter_dim": 4}
    small = tiny_net(vocab=61, seed=None, encoder={"max_seq_len": 8}, decoder=decoder)
    with pytest.raises(StageConfigError, match="vocabulary of 61"):
        StageSchedule("A").apply(small, 0)
    StageSchedule("A", train_new_token_rows=False).apply(small, 0)
