"""What one example is for each task, and how the collator and bucketing pad them."""

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from staria.data.cache import CachedSplit
from staria.data.collate import Collator, LengthBucketBatchSampler
from staria.data.datasets import (
    IGNORE_INDEX,
    ClassificationDataset,
    ContrastiveDataset,
    GenerativeDataset,
    PieceSource,
    SequenceSettings,
    SnippetAugmenter,
)
from staria.data.preprocess import IndexSettings, build_index
from staria.data.sequences import TokenLayout
from staria.data.synthetic import SynthesisConfig, synthesize
from staria.tokenizer import FORMS, GENRES

SETTINGS = SequenceSettings(snippet_len=32, max_snippets=4, max_seq_len=256)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("pieces")
    synthesize(SynthesisConfig(pieces_per_form=2, min_tokens=200, max_tokens=500), out / "midi")
    result = build_index([out / "midi"], out / "cache", IndexSettings("synthetic", "t"), workers=1)
    return PieceSource(CachedSplit(result.split_dirs["train"]), TokenLayout(tokenizer))


@pytest.fixture(scope="module")
def unlabelled(shared_midi_dir, tmp_path_factory, tokenizer):
    cache = tmp_path_factory.mktemp("real")
    result = build_index([shared_midi_dir], cache, IndexSettings(name="t"), workers=1)
    return PieceSource(CachedSplit(result.split_dirs["train"]), TokenLayout(tokenizer))


def test_staria_item_has_first_occurrence_snippets_and_the_whole_sequence(labelled, tokenizer):
    dataset = GenerativeDataset(labelled, SETTINGS, "staria", seed=0)
    for index in range(len(dataset)):
        item, record = dataset[index], labelled.record(index)
        ids = labelled.split.tokens(index)
        letters = list(dict.fromkeys(letter for letter, _, _ in record.sections))
        assert len(item["snippets"]) == len(letters)
        for snippet, letter in zip(item["snippets"], letters, strict=True):
            _, start, end = next(s for s in record.sections if s[0] == letter)
            assert tokenizer.decode([int(snippet[0])]) == [tokenizer.section_token(letter)]
            assert snippet[1:].tolist() == ids[start : min(end, start + 32)].tolist()
        tokens = item["tokens"]
        assert len(tokens) == min(len(ids), 256)
        body = int(np.flatnonzero(ids == tokenizer.bos_id)[0]) + 1
        assert tokens[:body].tolist() == ids[:body].tolist()
        assert item["loss_mask"].tolist() == [False] + [True] * (len(tokens) - 1)


def test_long_pieces_are_cropped_by_a_seeded_window_that_keeps_the_prefix(labelled):
    long_index = int(np.argmax(labelled.split.lengths))
    ids = labelled.split.tokens(long_index)
    assert len(ids) > 256
    crops = [
        GenerativeDataset(labelled, SETTINGS, "staria", s)[long_index]["tokens"] for s in (0, 0, 1)
    ]
    assert np.array_equal(crops[0], crops[1])
    assert not np.array_equal(crops[0], crops[2])
    body = int(np.flatnonzero(ids == labelled.bos_id)[0]) + 1
    window = crops[0][body:]
    starts = [
        i for i in range(body, len(ids)) if ids[i : i + len(window)].tolist() == window.tolist()
    ]
    assert len(crops[0]) == 256 and starts
    assert labelled.layout.note_length[ids[starts[0]]] > 0


def test_baseline_stream_puts_snippets_between_prompt_tokens_with_loss_on_the_sequence(labelled):
    staria = GenerativeDataset(labelled, SETTINGS, "staria")[0]
    item = GenerativeDataset(labelled, SETTINGS, "baseline")[0]
    prompt = [labelled.prompt_start_id, *np.concatenate(staria["snippets"]), labelled.prompt_end_id]
    assert item["tokens"].tolist() == prompt + staria["tokens"].tolist()
    assert item["loss_mask"].tolist() == [False] * len(prompt) + [True] * len(staria["tokens"])


def test_unlabelled_piece_is_one_a_section_opening(unlabelled, tokenizer):
    item = GenerativeDataset(unlabelled, SETTINGS, "staria")[0]
    ids = unlabelled.split.tokens(0)
    body = int(np.flatnonzero(ids == tokenizer.bos_id)[0]) + 1
    (snippet,) = item["snippets"]
    a_section = tokenizer.token_to_id[tokenizer.section_token("A")]
    assert snippet.tolist() == [a_section, *ids[body : body + 32].tolist()]


def test_contrastive_views_are_augmented_snippets_of_one_section(labelled, tokenizer):
    dataset = ContrastiveDataset(labelled, SETTINGS, SnippetAugmenter(tokenizer), seed=3)
    expected = sum(len(set(labelled.record(p).form)) for p in range(len(labelled)))
    assert len(dataset) == expected
    differing = 0
    for index in range(len(dataset)):
        piece, letter = dataset.items[index]
        item = dataset[index]
        assert item["group"] == piece * 4 + "ABCD".index(letter)
        for view in ("view_a", "view_b"):
            assert item[view][0] == tokenizer.token_to_id[tokenizer.section_token(letter)]
            assert len(tokenizer.ids_to_notes(item[view])) > 0
        differing += not np.array_equal(item["view_a"], item["view_b"])
    assert differing > len(dataset) // 2
    again = ContrastiveDataset(labelled, SETTINGS, SnippetAugmenter(tokenizer), seed=3)[0]
    assert np.array_equal(again["view_a"], dataset[0]["view_a"])


def test_classification_hides_structure_tokens_and_labels_every_token(labelled, tokenizer):
    dataset = ClassificationDataset(labelled, SETTINGS, "piece", style_key="genre")
    for index in range(len(dataset)):
        item, record = dataset[index], labelled.record(index)
        assert not np.isin(item["tokens"], labelled.structure_ids).any()
        assert item["form_label"] == FORMS.index(record.form)
        assert item["style_label"] == GENRES.index(record.style["genre"])
        labels = item["section_labels"]
        assert len(labels) == len(item["tokens"])
        body = int(np.flatnonzero(item["tokens"] == tokenizer.bos_id)[0]) + 1
        assert (labels[:body] == IGNORE_INDEX).all()
        assert set(labels[body:-1].tolist()) <= set(range(len(set(record.form))))
    snippet = ClassificationDataset(labelled, SETTINGS, "snippet")[0]
    assert len(snippet["tokens"]) == 32 and snippet["style_label"] == IGNORE_INDEX


def test_collator_pads_with_p_and_masks_real_tokens(labelled, tokenizer):
    dataset = GenerativeDataset(labelled, SETTINGS, "staria")
    items = [dataset[i] for i in range(3)]
    batch = Collator(tokenizer.pad_id)(items)
    for row, item in enumerate(items):
        n = len(item["tokens"])
        assert batch["token_mask"][row].sum() == n
        assert torch.equal(batch["tokens"][row, :n], torch.as_tensor(item["tokens"]))
        assert (batch["tokens"][row, n:] == 2).all() and not batch["loss_mask"][row, n:].any()
        for column, snippet in enumerate(item["snippets"]):
            assert batch["snippet_mask"][row, column].sum() == len(snippet)
        assert not batch["snippet_mask"][row, len(item["snippets"]) :].any()
        assert (batch["snippets"][~batch["snippet_mask"]] == 2).all()


def _pad_fraction(dataset, batches):
    lengths = dataset.lengths
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - real / padded


def test_length_bucketing_cuts_padding(unlabelled):
    dataset = GenerativeDataset(unlabelled, SequenceSettings(max_seq_len=4096), "staria")
    order = SequentialSampler(dataset)
    plain = list(BatchSampler(order, batch_size=4, drop_last=False))
    rng = np.random.default_rng(0)
    shuffled = [
        plain_batch.tolist()
        for plain_batch in np.array_split(rng.permutation(len(dataset)), len(plain))
    ]
    bucketed = LengthBucketBatchSampler(order, 4, False, dataset.lengths, bucket_batches=32)
    batches = list(bucketed)
    assert len(batches) == len(bucketed)
    assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
    assert _pad_fraction(dataset, batches) < 0.5 * _pad_fraction(dataset, shuffled)
    assert _pad_fraction(dataset, batches) < 0.15
