"""The manifest reader: documented fields become `GeneratedSample`s; bad ones are named."""

import json

import pytest

from staria.evaluation.samples import ManifestError, read_manifest

RECORD = {
    "file": "sample_000.mid",
    "form": "ABA",
    "style": None,
    "token_ids": [6, 17735, 0, 17727, 1],
    "prompt_ids": [[17727, 50], [17728, 60]],
    "ended_with_eos": True,
}


def write(tmp_path, manifest) -> str:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_reads_documented_fields(tmp_path):
    manifest = {"checkpoint": "last.ckpt", "seed": 3, "samples": [RECORD]}
    (sample,) = read_manifest(write(tmp_path, manifest))
    assert sample.name == "sample_000"
    assert sample.midi_path == tmp_path / "sample_000.mid"
    assert (sample.form, sample.style, sample.ended_with_eos) == ("ABA", None, True)
    assert sample.token_ids == (6, 17735, 0, 17727, 1)
    assert sample.prompt_ids == ((17727, 50), (17728, 60))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"ended_with_eos": None}, "samples[0].ended_with_eos"),
        ({"token_ids": [1, "x"]}, "samples[0].token_ids"),
        ({"prompt_ids": [[1], [2.5]]}, "samples[0].prompt_ids[1]"),
    ],
)
def test_bad_fields_are_named(tmp_path, change, key):
    path = write(tmp_path, {"samples": [RECORD | change]})
    with pytest.raises(ManifestError, match=key.replace("[", r"\[").replace("]", r"\]")):
        read_manifest(path)


def test_missing_field_is_named(tmp_path):
    record = {k: v for k, v in RECORD.items() if k != "form"}
    with pytest.raises(ManifestError, match="form"):
        read_manifest(write(tmp_path, {"samples": [record]}))
