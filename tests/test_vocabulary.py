"""The vocabulary module's id ranges against the token listing they index."""

import pickle
from copy import deepcopy

from staria.data.sequences import TokenLayout
from staria.tokenizer import VOCAB_SIZE, MusicTokenizerWithStyle
from staria.tokenizer.midi_io import DRUM, FAMILIES
from staria.tokenizer.vocabulary import STARIA_TOKENS, build_vocabulary, vocabulary_ids


def test_every_range_holds_exactly_its_kind_of_token():
    vocab, ids = build_vocabulary(), vocabulary_ids()
    kinds = {
        "prefix": range(ids.prefix_base, ids.prefix_base + len(FAMILIES)),
        "note": range(ids.note_base, ids.drum_base),
        "drum": range(ids.drum_base, ids.dur_base),
        "dur": range(ids.dur_base, ids.onset_base),
        "onset": range(ids.onset_base, ids.onset_base + ids.onset_count),
    }
    for token_id, token in enumerate(vocab):
        if not isinstance(token, tuple):
            kind = None
        elif token[0] == "prefix":
            kind = "prefix" if token[1] == "instrument" else None
        elif token[0] == DRUM:
            kind = "drum"
        elif token[0] in FAMILIES:
            kind = "note"
        else:
            kind = token[0]
        inside = [name for name, span in kinds.items() if token_id in span]
        assert inside == ([kind] if kind else []), (token_id, token)


def test_the_ids_by_hand():
    ids = vocabulary_ids()
    # Aria's 17,727 ids, then Staria's 15: sections A-D, the prompt markers, the 9 forms.
    assert VOCAB_SIZE == 17_742
    assert ids.staria_ids == tuple(range(17_727, 17_742))
    assert ids.section_ids == {"A": 17_727, "B": 17_728, "C": 17_729, "D": 17_730}
    assert ids.structure_ids == (17_727, 17_728, 17_729, 17_730, *range(17_733, 17_742))
    assert (ids.pad, ids.bos, ids.eos, ids.unknown) == (2, 0, 1, 3)
    assert ids.onset_count == 500  # 5,000 ms segments in 10 ms steps
    assert build_vocabulary()[17_727:] == STARIA_TOKENS


def test_note_length_counts_the_tokens_each_note_takes():
    tokenizer = MusicTokenizerWithStyle()
    tokens = [
        ("prefix", "instrument", "piano"),
        "<S>",
        ("piano", 60, 80),
        ("onset", 0),
        ("dur", 500),
        (DRUM, 36),
        ("onset", 100),
        "<E>",
    ]
    ids = tokenizer.encode(tokens)
    assert tokenizer.unknown_id not in ids
    assert tokenizer.note_length[ids].tolist() == [0, 0, 3, 0, 0, 2, 0, 0]


def test_the_tokenizer_and_layout_pickle_for_spawned_workers():
    """DataLoader and index workers started by spawn or forkserver receive them pickled."""
    tokenizer = MusicTokenizerWithStyle()
    for thing in (tokenizer, TokenLayout(tokenizer)):
        copy = pickle.loads(pickle.dumps(thing))
        assert type(copy) is type(thing)
    back = pickle.loads(pickle.dumps(tokenizer))
    assert back.vocabulary_ids is vocabulary_ids()
    tokens = [("onset", 0), "<A_SECTION>"]
    assert back.encode(tokens) == tokenizer.encode(tokens)
    assert deepcopy(tokenizer).staria_token_ids == tokenizer.staria_token_ids
