"""A compact vocabulary: the model keeps rows for the ids its data uses and computes what the
full model computes on them; a real run's checkpoint records the rows, resumes, generates."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from staria.generation.checkpoint import load_checkpoint
from staria.generation.generate import generate
from staria.generation.manifest import MANIFEST_FILE
from staria.models import StariaModel
from staria.models.autoregressive import DecodingSpec, LogitsFilter
from staria.models.xtransformers import (
    CompactEmbedding,
    compact_ids_in,
    use_compact_vocabulary,
    vocabulary_parameter_count,
)
from staria.tokenizer.vocabulary import UNKNOWN_ID
from staria.training.tasks import StariaTask
from staria.training.tasks.base import sequence_loss
from staria.training.train import train
from tests.harness import compose_config, steps, tiny_net
from tests.training.runs import preempt_at_step, smoke

VOCAB = 97
USED = torch.tensor([0, 1, 2, UNKNOWN_ID, 7, 11, 30, 31, 50, 96])


def staria(aria_layout: bool = False) -> StariaModel:
    decoder = {"max_seq_len": 64, "adapter_dim": 4, "gate_init": 1.0, "aria_layout": aria_layout}
    return tiny_net(vocab=VOCAB, encoder={"max_seq_len": 16}, decoder=decoder).eval()


def tiny_baseline():
    return tiny_net("baseline_tiny", vocab=VOCAB, seed=None, max_seq_len=64)


def used_tokens(shape: tuple[int, ...]) -> torch.Tensor:
    return USED[torch.randint(0, len(USED), shape)]


@pytest.mark.parametrize("aria_layout", [False, True])
def test_compact_model_computes_the_full_models_logits_on_its_ids(aria_layout):
    full = staria(aria_layout)
    compact = copy.deepcopy(full)
    use_compact_vocabulary(compact, USED, UNKNOWN_ID)
    snippets, tokens = used_tokens((2, 3, 8)), used_tokens((2, 12))
    snippet_mask, token_mask = snippets != 2, torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        ours = compact(snippets, snippet_mask, tokens, token_mask)
        theirs = full(snippets, snippet_mask, tokens, token_mask)
    torch.testing.assert_close(ours[..., USED], theirs[..., USED])
    unused = torch.ones(VOCAB, dtype=torch.bool)
    unused[USED] = False
    assert torch.isneginf(ours[..., unused]).all()
    parameters = sum(p.numel() for p in compact.parameters())
    assert parameters == sum(p.numel() for p in full.parameters()) - 3 * (VOCAB - len(USED)) * 32


def test_an_id_outside_reads_as_unknown_and_samples_stay_inside():
    baseline = tiny_baseline().eval()
    use_compact_vocabulary(baseline, USED, UNKNOWN_ID)
    embedding: CompactEmbedding = baseline.net.token_emb.emb
    outside = torch.tensor([[5, 60]])
    torch.testing.assert_close(embedding(outside), embedding(torch.full_like(outside, UNKNOWN_ID)))
    prompt = used_tokens((3, 4))
    sampled = baseline.generate(prompt, 30, DecodingSpec(logits_filter=LogitsFilter(), eos_id=-1))
    assert np.isin(sampled.numpy(), USED.numpy()).all()


def test_a_compact_run_records_its_rows_resumes_and_generates(tmp_path, module_data_cache):
    run_dir = tmp_path / "run"
    cfg = smoke(run_dir, "model.vocabulary=compact", *steps(4))
    preempt_at_step(cfg, 2)  # SIGUSR2 as before a time limit: step 2 ends, then last.ckpt
    assert train(cfg).global_step == 3
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    rows = compact_ids_in(state)
    assert rows is not None and UNKNOWN_ID in rows.tolist() and len(rows) < 2000
    decoder_rows = state["net.decoder.net.token_emb.emb.weight"].shape[0]
    assert decoder_rows == len(rows) == state["net.decoder.net.to_logits.weight"].shape[0]
    more_data = ["data.synthesis.pieces_per_form=5", "resume.apply_changes=true"]
    resumed = train(smoke(run_dir, "model.vocabulary=compact", *steps(4), *more_data))
    assert resumed.global_step == 4  # resumed into its own rows, whatever the data holds now
    assert torch.equal(resumed.lightning_module.net.decoder.net.token_emb.emb.full_ids, rows)
    loaded = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.net.decoder.net.token_emb.emb, CompactEmbedding)
    out_dir = tmp_path / "samples"
    generate(
        compose_config(
            "generate",
            f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"out_dir={out_dir}",
            "num_samples=2",
            "sampling.max_length=40",
            "device=cpu",
        )
    )
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    ids = [i for sample in manifest["samples"] for i in sample["token_ids"]]
    assert ids and np.isin(ids, rows.numpy()).all()


def test_the_compact_loss_is_the_full_logits_loss_with_its_gradients():
    model = staria()
    use_compact_vocabulary(model, USED, UNKNOWN_ID)
    optimization = {
        "optimizer": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "scheduler": {"warmup_steps": 1, "total_steps": 1, "min_lr_ratio": 0.1},
    }
    task = StariaTask(model, vocabulary="compact", **optimization)
    snippets, tokens = used_tokens((2, 3, 8)), used_tokens((2, 12))
    batch = {
        "snippets": snippets,
        "snippet_mask": snippets != 2,
        "tokens": tokens,
        "token_mask": torch.ones_like(tokens, dtype=torch.bool),
        "loss_mask": torch.rand(2, 12) < 0.8,
    }
    inputs = (batch["snippets"], batch["snippet_mask"], batch["tokens"], batch["token_mask"])
    ours = task.step_loss(batch).loss
    ours.backward()
    ours_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    theirs = sequence_loss(model(*inputs), batch["tokens"], batch["loss_mask"]).loss
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    for mine, full in zip(ours_grad, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(mine, full, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("aria_layout", [False, True])
def test_vocabulary_parameters_are_the_embedding_and_head_rows_full_or_compact(aria_layout):
    model = staria(aria_layout)
    # encoder embedding; decoder embedding and untied head: 32 wide each
    assert vocabulary_parameter_count(model) == 3 * VOCAB * 32
    use_compact_vocabulary(model, USED, UNKNOWN_ID)
    assert vocabulary_parameter_count(model) == 3 * len(USED) * 32
    baseline = tiny_baseline()
    trunk = sum(p.numel() for p in baseline.parameters()) - 2 * VOCAB * 32
    use_compact_vocabulary(baseline, USED, UNKNOWN_ID)
    assert vocabulary_parameter_count(baseline) == 2 * len(USED) * 32
    assert sum(p.numel() for p in baseline.parameters()) - 2 * len(USED) * 32 == trunk
