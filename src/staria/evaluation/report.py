"""One self-contained HTML page per evaluation, and the same content sent to W&B.

Images and audio are inlined as data URIs, so the page opens offline, from any folder, and can
be mailed as one file. Samples are rendered once (`render_samples`) and shared by both outputs.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from PIL import Image

from staria.evaluation.audio import PREVIEW_SAMPLE_RATE, PREVIEW_SECONDS, render_audio, wav_bytes
from staria.evaluation.notes import TokenTable, sectioned_notes
from staria.evaluation.piano_roll import sample_figure_png
from staria.evaluation.samples import GeneratedSample
from staria.evaluation.structure_metrics import decodes_to_midi

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.metrics { border-collapse: collapse; }
table.metrics td, table.metrics th { border-bottom: 1px solid #ddd; padding: 0.25em 1em; }
table.metrics td.value { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; display: block; }
figcaption { font-size: 0.9em; color: #555; }
"""


@dataclass(frozen=True)
class SampleMedia:
    """What a reader sees and hears of one sample; `audio` is None when its MIDI is unreadable."""

    name: str
    caption: str
    piano_roll_png: bytes
    audio: np.ndarray | None
    sample_rate: int


def _caption(sample: GeneratedSample, found_form: str) -> str:
    asked = f"asked for form {sample.form or '-'}"
    asked += f", style {sample.style}" if sample.style else ""
    ending = "ended with <E>" if sample.ended_with_eos else "no <E> (stopped at max length)"
    return f"{sample.name}: {asked}; sections found: {found_form or 'none'}; {ending}"


def render_samples(
    samples: Sequence[GeneratedSample],
    table: TokenTable,
    audio_seconds: float = PREVIEW_SECONDS,
    sample_rate: int = PREVIEW_SAMPLE_RATE,
    soundfont: str | Path | None = None,
) -> list[SampleMedia]:
    """Piano roll (sample beside its prompt snippets) and an audio preview of every sample."""
    media = []
    for sample in samples:
        piece = sectioned_notes(sample.token_ids, table)
        prompts = [sectioned_notes(snippet, table) for snippet in sample.prompt_ids]
        audio = (
            render_audio(sample.midi_path, audio_seconds, sample_rate, soundfont)
            if decodes_to_midi(sample)
            else None
        )
        caption = _caption(sample, piece.form)
        media.append(
            SampleMedia(
                name=sample.name,
                caption=caption,
                piano_roll_png=sample_figure_png(piece, prompts, sample.name),
                audio=audio,
                sample_rate=sample_rate,
            )
        )
    return media


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float | int | None]:
    """Scalars of a nested mapping as `group/name` keys; lists (e.g. confusion matrices) are left
    to their figures."""
    flat: dict[str, float | int | None] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif value is None or isinstance(value, (int, float)):
            flat[name] = value
    return flat


def _format(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _sample_html(media: SampleMedia) -> str:
    name = html.escape(media.name)
    parts = [f'<figure class="sample" id="{name}">']
    parts.append(
        f'<img alt="piano roll of {name}" src="{_data_uri("image/png", media.piano_roll_png)}">'
    )
    if media.audio is None:
        parts.append("<p>no audio: the MIDI file does not read back</p>")
    else:
        wav = _data_uri("audio/wav", wav_bytes(media.audio, media.sample_rate))
        parts.append(f'<audio controls preload="auto" src="{wav}"></audio>')
    parts.append(f"<figcaption>{html.escape(media.caption)}</figcaption></figure>")
    return "\n".join(parts)


def write_report(
    out_path: str | Path,
    metrics: Mapping[str, Any],
    samples: Sequence[SampleMedia],
    figures: Mapping[str, bytes] | None = None,
    title: str = "Staria evaluation",
) -> Path:
    """Write the page: metrics table, extra PNG `figures` (e.g. confusion matrices), samples."""
    out_path = Path(out_path)
    rows = "\n".join(
        f'<tr><td>{html.escape(name)}</td><td class="value">{_format(value)}</td></tr>'
        for name, value in flatten_metrics(metrics).items()
    )
    figure_html = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="{_data_uri("image/png", png)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, png in (figures or {}).items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{PAGE_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<h2>Metrics</h2>
<table class="metrics"><tr><th>metric</th><th>value</th></tr>
{rows}
</table>
{figure_html}
<h2>Samples ({len(samples)})</h2>
{"".join(_sample_html(media) for media in samples)}
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path


def log_to_wandb(
    metrics: Mapping[str, Any],
    samples: Sequence[SampleMedia],
    figures: Mapping[str, bytes] | None = None,
    run: Any | None = None,
    prefix: str = "eval",
) -> bool:
    """Log the report's content to `run` (default: the active W&B run); False when there is none.

    Scalars go to the run summary and history, figures as images; each sample's piano roll and
    audio are logged under their own keys and together in one samples table.
    """
    run = run if run is not None else wandb.run
    if run is None:
        return False
    scalars = {f"{prefix}/{name}": value for name, value in flatten_metrics(metrics).items()}
    images = {
        f"{prefix}/{name}": wandb.Image(Image.open(io.BytesIO(png)))
        for name, png in (figures or {}).items()
    }
    samples_table = wandb.Table(columns=["name", "caption", "piano_roll", "audio"])
    sample_media: dict[str, Any] = {}
    # W&B encodes raw arrays with soundfile; handing it our own WAV files needs nothing extra.
    with tempfile.TemporaryDirectory() as wav_dir:
        for media in samples:
            roll = wandb.Image(Image.open(io.BytesIO(media.piano_roll_png)), caption=media.caption)
            sample_media[f"{prefix}/piano_roll/{media.name}"] = roll
            audio = None
            if media.audio is not None:
                wav_path = Path(wav_dir) / f"{media.name}.wav"
                wav_path.write_bytes(wav_bytes(media.audio, media.sample_rate))
                audio = wandb.Audio(
                    str(wav_path), sample_rate=media.sample_rate, caption=media.name
                )
                sample_media[f"{prefix}/audio/{media.name}"] = audio
            samples_table.add_data(media.name, media.caption, roll, audio)
        run.log({**scalars, **images, **sample_media, f"{prefix}/samples": samples_table})
    run.summary.update({k: v for k, v in scalars.items() if v is not None})
    return True
