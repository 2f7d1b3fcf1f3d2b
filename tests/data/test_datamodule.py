"""MidiDataModule from the real Hydra config: batches per task, seeding, rank sharding."""

import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from staria.data import MidiDataModule
from staria.data.datamodule import synthetic_pieces
from staria.data.synthetic import SynthesisConfig
from tests.harness import compose_config

TINY = ["snippet_len=32", "max_seq_len=256", "batch_size=4"]
TINY_SYNTHESIS = [
    "synthesis.pieces_per_form=3",
    "synthesis.min_tokens=200",
    "synthesis.max_tokens=500",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def make_module(cache_dir: Path, *overrides: str, config: str = "synthetic") -> MidiDataModule:
    """The data group of the composed training config (`overrides` relative to it); `task`
    and `model_kind` follow the default model, Staria: generative batches."""
    shrink = [*TINY, *(TINY_SYNTHESIS if config == "synthetic" else [])]
    data = [f"data.{item}" for item in (*shrink, f"cache_dir={cache_dir}", *overrides)]
    module = instantiate(compose_config("train", f"data={config}", *data).data)
    module.prepare_data()
    module.setup("fit")
    return module


def first_batch(module: MidiDataModule) -> dict[str, torch.Tensor]:
    return next(iter(module.train_dataloader()))


@pytest.mark.parametrize(
    ("overrides", "shapes"),
    [
        (
            ["task=generative", "model_kind=staria"],
            {"snippets": 3, "snippet_mask": 3, "tokens": 2, "token_mask": 2, "loss_mask": 2},
        ),
        (
            ["task=generative", "model_kind=baseline"],
            {"tokens": 2, "token_mask": 2, "loss_mask": 2},
        ),
        (
            ["task=contrastive"],
            {"view_a": 2, "view_a_mask": 2, "view_b": 2, "view_b_mask": 2, "group": 1},
        ),
        (
            ["task=classification"],
            {"tokens": 2, "token_mask": 2, "form_label": 1, "style_label": 1, "section_labels": 2},
        ),
    ],
)
def test_each_task_yields_the_documented_batch(cache_dir, overrides, shapes):
    module = make_module(cache_dir, *overrides)
    batch = first_batch(module)
    assert {key: value.dim() for key, value in batch.items()} == shapes
    for key, value in batch.items():
        assert value.shape[0] == 4
        assert value.dtype == (torch.bool if key.endswith("mask") else torch.long)
    for tokens, mask in (("tokens", "token_mask"), ("view_a", "view_a_mask")):
        if tokens in batch:
            assert ((batch[tokens] == module.pad_id) | batch[mask]).all()
            assert (batch[tokens][~batch[mask]] == 2).all()
    if "loss_mask" in batch:
        assert not (batch["loss_mask"] & ~batch["token_mask"]).any()
    if "snippets" in batch:
        assert batch["snippets"].shape[-1] <= module.max_snippet_tokens


def test_same_seed_same_batches_other_seed_other_order(cache_dir):
    first = [b["tokens"] for b in make_module(cache_dir).train_dataloader()]
    again = [b["tokens"] for b in make_module(cache_dir).train_dataloader()]
    other = [b["tokens"] for b in make_module(cache_dir, "seed=1").train_dataloader()]
    assert len(first) == len(again) and all(map(torch.equal, first, again))
    assert [b.shape for b in first] != [b.shape for b in other] or not all(
        map(torch.equal, first, other)
    )


def test_two_ranks_get_disjoint_shards(cache_dir):
    seen = []
    for rank in range(2):
        module = make_module(cache_dir, "task=classification")
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = module.train_dataloader()
        loader.batch_sampler.set_epoch(0)
        seen.append({i for batch in loader.batch_sampler for i in batch})
    total = len(module.datasets["train"])
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == total // 2


def test_real_mode_indexes_shared_midi_without_labels(shared_midi_dir, cache_dir):
    module = make_module(
        cache_dir, f"folders=[{shared_midi_dir}]", "num_workers=0", "index_workers=1",
        config="real",
    )  # fmt: skip
    batch = first_batch(module)
    assert batch["snippets"].shape[1] == 1
    a_section = module.tokenizer.token_to_id["<A_SECTION>"]
    assert (batch["snippets"][:, 0, 0] == a_section).all()


def _synthesise_into(cache_dir: str) -> str:
    config = SynthesisConfig(pieces_per_form=1, forms=("AB", "ABA"), min_tokens=200, max_tokens=400)
    folder = synthetic_pieces(config, Path(cache_dir))
    return sorted(p.name for p in folder.rglob("*.mid"))


def test_concurrent_callers_share_one_synthesis(tmp_path):
    """Two sweep points starting on an empty cache must not delete each other's pieces."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        listings = pool.map(_synthesise_into, [str(tmp_path)] * 2)
    assert listings[0] == listings[1] and len(listings[0]) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_the_cache_is_named_after_the_data_sets_name(cache_dir):
    module = make_module(cache_dir, "name=demo")
    assert module.index_settings.name == "demo"
    assert list(cache_dir.glob("dataset_synthetic_demo_limit0_*_train"))
