import json

import numpy as np
import pytest

from staria.data.labels import LabelFormatError, PieceLabels, Section, labels_path


def _aba() -> PieceLabels:
    sections = (Section("A", 0.0, 8.0), Section("B", 8.0, 12.5), Section("A", 12.5, 20.5))
    return PieceLabels(
        "ABA", sections, {"composer": None, "form": None, "genre": "jazz"}, seed=7, split="val"
    )


def test_save_load_round_trip(tmp_path):
    path = labels_path(tmp_path / "piece.mid")
    assert path == tmp_path / "piece.json"
    _aba().save(path)
    assert PieceLabels.load(path) == _aba()
    assert json.loads(path.read_text())["sections"][1] == {"letter": "B", "start": 8.0, "end": 12.5}


def test_letters_for_onsets_are_half_open_and_mark_outside_notes():
    onsets = np.array([0.0, 7.99, 8.0, 12.49, 12.5, 20.49, 20.6, -0.5])
    assert _aba().letters_for_onsets(onsets).tolist() == ["A", "A", "B", "B", "A", "A", "", ""]
    assert _aba().section_of_onsets(onsets).tolist() == [0, 0, 1, 1, 2, 2, -1, -1]


def test_onset_quantized_just_before_a_boundary_counts_for_the_next_section():
    assert _aba().letters_for_onsets(np.array([7.997, 7.990])).tolist() == ["B", "A"]


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r.pop("seed"), "seed"),
        (lambda r: r.update(extra=1), "extra"),
        (lambda r: r.update(form="AXA"), "form"),
        (lambda r: r.update(form="ABAB"), "sections"),
        (lambda r: r.update(split="holdout"), "split"),
        (lambda r: r.update(seed="7"), "seed"),
        (lambda r: r["sections"][1].update(start=7.0), "sections[1]"),
        (lambda r: r["sections"][0].pop("end"), "sections[0]"),
        (lambda r: r["sections"][2].update(letter="E"), "sections[2].letter"),
        (lambda r: r["style"].update(era="baroque"), "style"),
        (lambda r: r.update(origins={"A": "x.mid"}), "origins"),
    ],
)
def test_malformed_labels_name_file_and_key(tmp_path, edit, key):
    record = _aba().to_json()
    edit(record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(LabelFormatError) as raised:
        PieceLabels.load(path)
    assert raised.value.key == key
    assert str(path) in str(raised.value)


def test_invalid_json_is_a_label_format_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(LabelFormatError, match=r"broken\.json"):
        PieceLabels.load(path)
