"""The staged recipe's mechanics: part weights from other runs (encoder, decoder), the encoder
check, the kind-unigram anchor, and the chain itself on real runs, resumed phase by phase."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from staria.data.datasets import PieceSource
from staria.evaluation.anchors import kind_unigram_loss
from staria.research.phases import val_curve
from staria.research.recipe import (
    Recipe,
    RecipeError,
    run_recipe,
    summary,
)
from staria.tokenizer import MusicTokenizerWithStyle, TokenKind, TokenTable
from staria.training.config import ConfigValueError, check_consistent
from staria.training.encoder_check import ENCODER_CHECK_FILE, section_retrieval
from staria.training.tasks import StariaTask
from staria.training.tasks.base import InitWeightsError
from staria.training.train import RunConfigChangedError
from tests.harness import SHRINK, TINY_TRUNK, compose_config, steps, tiny_net
from tests.training.runs import first_train_batch, synthetic_datamodule

VOCAB = 61
OPTIMIZATION = {
    "optimizer": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
    "scheduler": {"warmup_steps": 1, "total_steps": 1, "min_lr_ratio": 0.1},
}


def staria_task(aria_layout: bool = False, checkpointing: bool = False) -> StariaTask:
    decoder = {
        "max_seq_len": 32,
        "adapter_dim": 8,
        "aria_layout": aria_layout,
        "activation_checkpointing": checkpointing,
    }
    net = tiny_net(vocab=VOCAB, seed=None, encoder={"max_seq_len": 16}, decoder=decoder)
    return StariaTask(net, **OPTIMIZATION)


def lightning_file(path, net: nn.Module):
    """A checkpoint as Lightning writes one: the task's `net.*` weights under `state_dict`."""
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.mark.parametrize(("aria_layout", "checkpointing"), [(False, False), (True, True)])
def test_a_decoder_only_run_becomes_the_decoder_and_computes_the_same(
    tmp_path, aria_layout, checkpointing
):
    baseline = tiny_net(
        "baseline_tiny", vocab=VOCAB, seed=1, max_seq_len=32, aria_layout=aria_layout
    )
    task = staria_task(aria_layout, checkpointing)
    task.init_decoder_from(lightning_file(tmp_path / "baseline.ckpt", baseline))
    tokens = torch.randint(3, VOCAB, (2, 20))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    context = torch.randn(2, 5, TINY_TRUNK["dim"])
    decoder = task.net.decoder.eval()
    with torch.no_grad():  # closed gates and zero adapters: exactly the decoder-only model
        ours = decoder(tokens, mask, context, torch.ones(2, 5, dtype=torch.bool))
        torch.testing.assert_close(ours, baseline.eval()(tokens, mask), rtol=0, atol=1e-5)
    bridge = decoder.bridge_modules()
    assert bridge and all(gate.item() == 0 for gate in decoder.cross_attention_gates())


def test_a_contrastive_run_becomes_the_encoder(tmp_path):
    encoder = tiny_net("encoder_tiny", vocab=VOCAB, seed=2, max_seq_len=16)
    task = staria_task()
    task.init_encoder_from(lightning_file(tmp_path / "contrastive.ckpt", encoder))
    for name, value in encoder.state_dict().items():
        assert torch.equal(task.net.encoder.state_dict()[name], value), name
    other = staria_task()  # a Staria (or classifier) run: its `encoder.*` part
    other.init_encoder_from(lightning_file(tmp_path / "staria.ckpt", task.net))
    assert torch.equal(other.net.encoder.net.token_emb.emb.weight, encoder.net.token_emb.emb.weight)


def test_weights_of_another_shape_are_refused_naming_the_setting_and_file(tmp_path):
    wide = tiny_net("encoder_tiny", VOCAB, None, {"dim": 48, "dim_head": 24}, max_seq_len=16)
    path = lightning_file(tmp_path / "wide.ckpt", wide)
    with pytest.raises(InitWeightsError, match=re.escape(f"init_encoder_from={path}")):
        staria_task().init_encoder_from(path)
    baseline = tiny_net("baseline_tiny", VOCAB, None, {"depth": 3}, max_seq_len=32)
    path = lightning_file(tmp_path / "deep.ckpt", baseline)
    with pytest.raises(InitWeightsError, match=re.escape(f"init_decoder_from={path}")):
        staria_task().init_decoder_from(path)


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", bytes(range(256)) * 4])
def test_unreadable_weights_are_refused_naming_the_setting_and_file(tmp_path, content):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(content)
    for key in ("init_encoder_from", "init_decoder_from", "init_from"):
        with pytest.raises(InitWeightsError, match=re.escape(f"{key}={path}")):
            getattr(staria_task(), key)(path)


def test_a_missing_weights_file_is_refused_before_anything_is_built():
    cfg = compose_config("train", "experiment=demo", "init_decoder_from=/nowhere/w.ckpt")
    with pytest.raises(ConfigValueError, match=re.escape("init_decoder_from=/nowhere/w.ckpt")):
        check_consistent(cfg)


def test_the_recipe_checks_every_preset_and_role_first(tmp_path):
    with pytest.raises(RecipeError, match="--staria nosuch"):
        run_recipe(Recipe("demo_encoder", "demo_unconditional", "nosuch"), tmp_path)
    with pytest.raises(RecipeError, match="--encoder demo trains StariaTask"):
        run_recipe(Recipe("demo", "demo_unconditional", "demo"), tmp_path)
    with pytest.raises(RecipeError, match="--decoder demo_encoder trains ContrastiveTask"):
        run_recipe(Recipe("demo_encoder", "demo_encoder", "demo"), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing trained


def test_part_weights_need_a_model_with_that_part():
    cfg = compose_config("train", "experiment=demo_baseline", "init_encoder_from=/x.ckpt")
    with pytest.raises(ConfigValueError, match=re.escape("init_encoder_from=/x.ckpt")):
        check_consistent(cfg)
    aria = ["model/net=staria_aria_tiny", "model.net.aria_weights=/a.safetensors"]
    cfg = compose_config("train", "experiment=demo", *aria, "model.vocabulary=compact")
    with pytest.raises(ConfigValueError, match=re.escape("model.vocabulary=compact")):
        check_consistent(cfg)


class NotesHistogram(nn.Module):
    """An encoder that pools the counts of each row's note ids: it recovers any repeat whose
    notes are the opening's notes (the check's ceiling); onsets, which shift, are left out."""

    def __init__(self, note_ids: np.ndarray) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # the check reads its device
        self.notes = torch.as_tensor(note_ids)

    def forward(self, rows, mask):
        counts = torch.zeros(rows.shape[0], len(self.notes))
        for column, note in enumerate(self.notes.tolist()):
            counts[:, column] = ((rows == note) & mask).sum(dim=1)
        return None, counts + 1e-3


class Constant(NotesHistogram):
    def forward(self, rows, mask):
        return None, torch.ones(rows.shape[0], 3)


def test_encoder_check_reaches_its_ceiling_and_a_blind_encoder_sits_at_chance(tmp_path):
    datamodule = synthetic_datamodule(
        tmp_path, synthesis={"pieces_per_form": 4, "forms": ["ABA", "ABAB", "ABCA"]}
    )
    first_train_batch(datamodule)
    source: PieceSource = datamodule.datasets["val"].source
    records = [source.record(i) for i in range(len(source))]
    letters = sum(len(set(r.form)) for r in records)
    repeats = sum(len(r.form) - len(set(r.form)) for r in records)
    tokenizer = MusicTokenizerWithStyle()
    notes = np.flatnonzero(TokenTable.from_tokenizer(tokenizer).kind == TokenKind.NOTE)
    blind = Constant(notes)
    result = section_retrieval(NotesHistogram(notes), source, datamodule.sequence, untrained=blind)
    assert (result.queries, result.candidates) == (repeats, letters)
    assert result.chance == pytest.approx(1 / letters)
    assert result.accuracy == 1.0
    # ties everywhere: the first candidate wins, which is right only for piece 0's first repeat
    assert result.untrained == pytest.approx(1 / repeats)


def test_kind_unigram_anchor_by_hand():
    tokenizer = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tokenizer)
    s, t, e = tokenizer.bos_id, tokenizer.time_id, tokenizer.eos_id
    train = [np.array([s, t, t, e])]
    held_out = [np.array([s, t, e])]
    kinds = int(table.kind.max()) + 1
    # transitions counted on train (+1 everywhere): OTHER->TIME 1, TIME->TIME 1, TIME->END 1
    other, time, end = int(TokenKind.OTHER), int(TokenKind.TIME), int(TokenKind.END)
    row_other, row_time = kinds + 1, kinds + 2
    transition = {(other, time): 2 / row_other, (time, end): 2 / row_time}
    # token given kind: <T> and <E> are the only ids of their kinds; counts 1 + 2 and 1 + 1
    token = {t: 1.0, e: 1.0}
    expected = (
        -(math.log(transition[other, time] * token[t]) + math.log(transition[time, end] * token[e]))
        / 2
    )
    assert np.count_nonzero(table.kind == TokenKind.TIME) == 1
    assert np.count_nonzero(table.kind == TokenKind.END) == 1
    assert kind_unigram_loss(train, held_out, table, s) == pytest.approx(expected)


TINY_CHAIN = (
    *SHRINK,
    *steps(2),
    "trainer.limit_val_batches=1",
    "logger=csv",  # val_curve reads the run's CSV log
    "data.synthesis.pieces_per_form=4",
    "data.batch_size=2",
)


@pytest.mark.slow
def test_the_chain_runs_each_stage_from_the_last_and_resumes(tmp_path, module_data_cache):
    recipe = Recipe("demo_encoder", "demo_baseline", "demo")
    runs = tmp_path / "recipe"
    phases = run_recipe(recipe, runs, TINY_CHAIN)
    assert list(phases) == ["encoder", "decoder", "A", "B", "C"]
    assert not any(phase.skipped for phase in phases.values())
    check = json.loads((runs / "stage-A" / ENCODER_CHECK_FILE).read_text())
    assert check["encoder"].endswith("encoder/checkpoints/last.ckpt")
    assert check["queries"] > 0 and check["chance"] == pytest.approx(1 / check["candidates"])
    stored = (runs / "stage-B" / "config.yaml").read_text()
    assert f"init_from: {runs / 'stage-A' / 'checkpoints' / 'last.ckpt'}" in stored
    assert all(val_curve(phase.folder) for phase in phases.values())
    lines = summary(phases, anchor=4.5).splitlines()
    assert lines[0].endswith("(kind-unigram anchor: 4.50)") and "NT-Xent" in lines[1]
    c_first, c_last = (
        val_curve(phases["C"].folder)[0][1],
        val_curve(phases["C"].folder)[-1][1],
    )
    assert f"{c_first:.2f} -> step" in lines[-1] and f"{c_last:.2f} (" in lines[-1]
    (runs / "stage-C" / "finished.json").unlink()  # C interrupted: only C runs again
    again = run_recipe(recipe, runs, TINY_CHAIN)
    assert [name for name, phase in again.items() if not phase.skipped] == ["C"]
    with pytest.raises(RunConfigChangedError, match="lr"):  # finished, but with other settings
        run_recipe(recipe, runs, (*TINY_CHAIN, "model.optimizer.lr=1e-4"))
    with pytest.raises(RunConfigChangedError, match="init_decoder_from"):
        run_recipe(Recipe("demo_encoder", None, "demo"), runs, TINY_CHAIN)
