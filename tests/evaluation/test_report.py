"""The HTML report opens in a real headless Chromium with every image and audio element loaded,
and W&B (offline) receives the same metrics, images and audio."""

import io
import json
import re
import shutil
import subprocess
import wave
from pathlib import Path

import pytest
import wandb

from staria.evaluation.audio import render_audio, wav_bytes
from staria.evaluation.report import SampleMedia, log_to_wandb, render_samples, write_report
from staria.evaluation.samples import GeneratedSample
from staria.tokenizer import TokenTable
from tests.evaluation.midi_files import write_midi

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Runs on window load: images must be decoded; every <audio> must reach its metadata (or fail).
# The verdict lands in a <pre id="verdict"> that --dump-dom prints.
VERDICT_SCRIPT = """
<script>
window.addEventListener("load", async () => {
  const images = [...document.images];
  const audios = [...document.querySelectorAll("audio")];
  const audioLoads = audios.map((audio) => new Promise((resolve) => {
    const verdict = () =>
      ({ready: audio.readyState, duration: audio.duration, error: Boolean(audio.error)});
    if (audio.error || audio.readyState >= 1) return resolve(verdict());
    audio.addEventListener("loadedmetadata", () => resolve(verdict()), {once: true});
    audio.addEventListener("error", () => resolve(verdict()), {once: true});
    audio.load();
  }));
  const report = {
    images: images.map((img) => ({complete: img.complete, width: img.naturalWidth})),
    audios: await Promise.all(audioLoads),
  };
  const out = document.createElement("pre");
  out.id = "verdict";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>
"""
NOTES = [(60, 0, 400), (64, 500, 400), (67, 1000, 400), (72, 1500, 900)]


def section_ids(tokenizer, letter: str, notes, offset_ms: int = 0) -> list[int]:
    tokens = [tokenizer.section_token(letter)]
    for pitch, onset, duration in notes:
        tokens += [("piano", pitch, 80), ("onset", offset_ms + onset), ("dur", duration)]
    return tokenizer.encode(tokens)


@pytest.fixture(scope="module")
def samples(tokenizer, tmp_path_factory) -> list[GeneratedSample]:
    folder = tmp_path_factory.mktemp("generated")
    head = tokenizer.encode([("prefix", "instrument", "piano"), "<AB>", "<S>"])
    body = section_ids(tokenizer, "A", NOTES) + section_ids(tokenizer, "B", NOTES, 2500)
    b_notes = [(p - 2, s + 2500, d) for p, s, d in NOTES]
    (folder / "broken.mid").write_bytes(b"MThd\x00")
    return [
        GeneratedSample(
            name="sample_000",
            midi_path=write_midi(folder / "sample_000.mid", NOTES + b_notes),
            form="AB",
            style="chopin",
            token_ids=tuple(head + body + [tokenizer.eos_id]),
            prompt_ids=(
                tuple(section_ids(tokenizer, "A", NOTES[:2])),
                tuple(section_ids(tokenizer, "B", NOTES[2:])),
            ),
            ended_with_eos=True,
        ),
        GeneratedSample(
            name="broken",
            midi_path=folder / "broken.mid",
            form="AB",
            style=None,
            token_ids=tuple(head + body),
            prompt_ids=(),
            ended_with_eos=False,
        ),
    ]


@pytest.fixture(scope="module")
def media(samples, tokenizer) -> list[SampleMedia]:
    return render_samples(samples, TokenTable.from_tokenizer(tokenizer), audio_seconds=3.0)


METRICS = {
    "structure": {"eos_fraction": 0.5, "section_similarity_gap": 0.25, "pitch_class_js": None},
    "form": {"accuracy": 1.0, "confusion": [[1, 0], [0, 1]]},
}


def test_audio_preview_is_short_mono_pcm(samples):
    audio = render_audio(samples[0].midi_path, seconds=2.0, sample_rate=8000)
    assert len(audio) == 2 * 8000 and abs(audio).max() == pytest.approx(1.0)
    with wave.open(io.BytesIO(wav_bytes(audio, 8000))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert wav.getnframes() == 2 * 8000


def test_report_is_self_contained(media, tmp_path):
    page = write_report(tmp_path / "report.html", METRICS, media).read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) == 3  # two piano rolls, one audio (the broken MIDI has none)
    assert all(
        source.startswith(("data:image/png;base64,", "data:audio/wav;base64,"))
        for source in sources
    )
    assert "<td>section_similarity_gap</td>" in page and "form/confusion" not in page
    assert "form/accuracy" in page
    assert "the MIDI file does not read back" in page


def test_report_says_what_made_the_samples_and_warns_when_untrained(media, tmp_path):
    metrics = {
        **METRICS,
        "intervals": {"eos_fraction": [0.1, 0.9]},
        "reference": {"eos_fraction": 1.0},
        "chance": {"section_similarity_gap": 0.0},
    }
    provenance = {
        "checkpoint_html": '<a href="../x/last.ckpt">x/last.ckpt</a>',
        "step": 150,
        "val_loss": 9.7,
        "uniform_loss": 9.78,
        "sampling": {"temperature": 0.9, "top_p": 0.95},
        "commit": "0123456789ab",
    }
    links = {m.name: f"../{m.name}.mid" for m in media}
    page = write_report(
        tmp_path / "report.html",
        metrics,
        media,
        title="Staria evaluation: runs/x",
        provenance=provenance,
        sample_links=links,
        meanings={"eos_fraction": "ended with <E>"},
    ).read_text()
    assert "essentially untrained" in page and "0123456789ab" in page
    assert '<a href="../x/last.ckpt">' in page and "temperature=0.9, top_p=0.95" in page
    row = re.search(r"<tr><td>eos_fraction</td>(.*?)</tr>", page).group(1)
    assert re.findall(r'<td class="value">(.*?)</td>', row) == [
        "0.5 [0.1, 0.9]",
        "1",
        "–",
        "ended with &lt;E&gt;",
    ]
    assert all(f'href="../{m.name}.mid"' in page for m in media)
    trained = write_report(
        tmp_path / "t.html", metrics, media, provenance={**provenance, "val_loss": 3.2}
    ).read_text()
    assert "untrained" not in trained


def chromium_verdict(page: Path, tmp_path: Path) -> dict:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "headless browser check needs Debian's `chromium` package (apt-get install chromium)"
        )
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", VERDICT_SCRIPT + "</body>"))
    result = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="verdict">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"no verdict from chromium (rc {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.browser
def test_report_loads_every_image_and_audio_in_chromium(media, tmp_path):
    figures = {"form confusion": media[0].piano_roll_png}
    page = write_report(tmp_path / "report.html", METRICS, media, figures=figures)
    verdict = chromium_verdict(page, tmp_path)
    assert len(verdict["images"]) == 3
    assert all(image["complete"] and image["width"] > 0 for image in verdict["images"])
    assert len(verdict["audios"]) == 1
    for audio in verdict["audios"]:
        assert not audio["error"] and audio["ready"] >= 1
        assert audio["duration"] == pytest.approx(3.0, abs=0.01)


@pytest.mark.browser
def test_browser_check_catches_a_broken_image(media, tmp_path):
    page = write_report(tmp_path / "report.html", METRICS, media)
    page.write_text(
        page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    )
    verdict = chromium_verdict(page, tmp_path)
    assert [image["width"] > 0 for image in verdict["images"]] == [False, True]


def test_wandb_offline_run_gets_metrics_images_and_audio(media, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    assert not log_to_wandb(METRICS, media)  # no active run: nothing to do
    run = wandb.init(project="staria-tests", dir=tmp_path, mode="offline")
    try:
        assert log_to_wandb(METRICS, media, figures={"form_confusion": media[0].piano_roll_png})
        assert run.summary["eval/structure/section_similarity_gap"] == 0.25
    finally:
        run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wav" for p in files), files
    assert sum(p.suffix == ".png" for p in files) >= 3, files  # figure + two piano rolls
    assert any(p.name.endswith(".table.json") for p in files), files
    assert any(p.suffix == ".wandb" for p in files), files
