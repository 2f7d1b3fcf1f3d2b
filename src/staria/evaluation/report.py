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
from staria.evaluation.notes import sectioned_notes
from staria.evaluation.piano_roll import sample_figure_png
from staria.evaluation.samples import GeneratedSample
from staria.evaluation.structure_metrics import decodes_to_midi
from staria.tokenizer import TokenTable

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.metrics { border-collapse: collapse; }
table.metrics td, table.metrics th { border-bottom: 1px solid #ddd; padding: 0.25em 1em; }
table.metrics td.value { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; display: block; }
figcaption { font-size: 0.9em; color: #555; }
p.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
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


def _sample_html(media: SampleMedia, midi_href: str | None = None) -> str:
    name = html.escape(media.name)
    parts = [f'<figure class="sample" id="{name}">']
    if midi_href:
        parts.append(f'<p><a href="{html.escape(midi_href)}">{name}.mid</a></p>')
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


# Groups of metrics.json that annotate the structure metrics rather than being metrics.
ANNOTATIONS = ("intervals", "reference", "chance")
# A validation loss this close to the uniform guess (ln of the vocabulary size): untrained.
UNTRAINED_FRACTION = 0.9


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table of already-escaped cells; columns from `numeric_from` align right."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="value">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="metrics"><tr>{head}</tr>\n{body}\n</table>'


def _interval(bounds: Sequence[float] | None) -> str:
    return f" [{_format(bounds[0])}, {_format(bounds[1])}]" if bounds else ""


def structure_table(metrics: Mapping[str, Any], meanings: Mapping[str, str]) -> str:
    """Each structure metric: the samples' value with its 95% interval, the reference set's
    value (the ceiling), chance, and what it means."""
    intervals = metrics.get("intervals", {})
    reference, chance = metrics.get("reference", {}), metrics.get("chance", {})
    rows = [
        [
            html.escape(name),
            _format(value) + _interval(intervals.get(name)),
            _format(reference.get(name)) if reference else "–",
            _format(chance.get(name)),
            html.escape(meanings.get(name, "")),
        ]
        for name, value in metrics["structure"].items()
    ]
    header = ["metric", "samples [95% interval]", "reference set", "chance", "meaning"]
    return _table(header, rows)


def untrained_warning(provenance: Mapping[str, Any]) -> str | None:
    """Why the samples say little about the method, or None."""
    loss, uniform = provenance.get("val_loss"), provenance.get("uniform_loss")
    if loss is None:
        return "no validation loss is recorded for this checkpoint: how trained it is is unknown"
    if uniform and loss >= UNTRAINED_FRACTION * uniform:
        return (
            f"the model is essentially untrained: val/loss {loss:.3f} is within "
            f"{1 - UNTRAINED_FRACTION:.0%} of a uniform guess over the vocabulary ({uniform:.3f})"
        )
    return None


def provenance_rows(provenance: Mapping[str, Any]) -> list[list[str]]:
    """`(what, value)` rows of what made the samples; links are given as HTML already."""
    rows = []
    for key, value in provenance.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={_format_setting(v)}" for k, v in value.items())
        shown = value if key.endswith("_html") else html.escape(_format_setting(value))
        rows.append([html.escape(key.removesuffix("_html")), shown])
    return rows


def _format_setting(value: Any) -> str:
    return _format(value) if isinstance(value, float) else "–" if value is None else str(value)


def write_report(
    out_path: str | Path,
    metrics: Mapping[str, Any],
    samples: Sequence[SampleMedia],
    figures: Mapping[str, bytes] | None = None,
    title: str = "Staria evaluation",
    provenance: Mapping[str, Any] | None = None,
    sample_links: Mapping[str, str] | None = None,
    meanings: Mapping[str, str] | None = None,
) -> Path:
    """Write the page: what made the samples (`provenance`, keys ending in `_html` are links),
    a warning when the model is untrained, the structure metrics beside their reference,
    chance and meaning, other metrics, extra PNG `figures` (e.g. confusion matrices), and the
    samples, each with a link (`sample_links`: name -> relative href) to its MIDI file."""
    out_path = Path(out_path)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if provenance:
        warning = untrained_warning(provenance)
        if warning:
            parts.append(f'<p class="warning"><strong>Note:</strong> {html.escape(warning)}</p>')
        parts += ["<h2>What made these samples</h2>", _table(["", ""], provenance_rows(provenance))]
    parts.append("<h2>Metrics</h2>")
    if "structure" in metrics:
        parts.append(structure_table(metrics, meanings or {}))
    others = {k: v for k, v in metrics.items() if k not in ("structure", *ANNOTATIONS)}
    if others:
        rows = [[html.escape(n), _format(v)] for n, v in flatten_metrics(others).items()]
        parts.append(_table(["metric", "value"], rows))
    parts += [
        f'<figure><img alt="{html.escape(name)}" src="{_data_uri("image/png", png)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, png in (figures or {}).items()
    ]
    parts.append(f"<h2>Samples ({len(samples)})</h2>")
    parts += [_sample_html(media, (sample_links or {}).get(media.name)) for media in samples]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{PAGE_STYLE}</style></head>
<body>
{chr(10).join(parts)}
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path


def _column_head(column: Mapping[str, Any]) -> str:
    trained = column["provenance"]
    loss = trained.get("val_loss")
    lines = [
        f'<a href="{html.escape(column["report"])}">{html.escape(column["evaluation"])}</a>',
        html.escape(f"{trained.get('model') or '?'}, step {_format_setting(trained.get('step'))}"),
        html.escape(f"val/loss {_format(loss)}"),
    ]
    return "<br>".join(lines)


def write_comparison(
    out_path: str | Path, columns: Sequence[Mapping[str, Any]], meanings: Mapping[str, str]
) -> Path:
    """A page with the structure metrics of several evaluations side by side (each `column`:
    `evaluation`, `report` href, `reference`, `provenance`, `sampling`, `metrics`), then the
    reference set's value and chance (from the first column; a warning when the columns were
    scored against different reference sets), and what each metric means."""
    out_path = Path(out_path)
    first = columns[0]["metrics"]
    names = list(first["structure"])
    rows = []
    for name in names:
        cells = [html.escape(name)]
        for column in columns:
            metrics = column["metrics"]
            value = metrics["structure"].get(name)
            cells.append(_format(value) + _interval(metrics.get("intervals", {}).get(name)))
        cells += [
            _format(first.get("reference", {}).get(name)) if "reference" in first else "–",
            _format(first.get("chance", {}).get(name)),
            html.escape(meanings.get(name, "")),
        ]
        rows.append(cells)
    header = ["metric", *map(_column_head, columns), "reference set", "chance", "meaning"]
    parts = ["<h1>Staria comparison</h1>"]
    if len({column["reference"] for column in columns}) > 1:
        parts.append(
            '<p class="warning"><strong>Note:</strong> the evaluations used different '
            "reference sets; distances are not comparable across columns.</p>"
        )
    for column in columns:
        warning = untrained_warning(column["provenance"])
        if warning:
            parts.append(f"<p>{html.escape(column['evaluation'])}: {html.escape(warning)}</p>")
    parts.append(_table(header, rows))
    settings = [
        [
            html.escape(column["evaluation"]),
            html.escape(
                ", ".join(f"{k}={_format_setting(v)}" for k, v in column["sampling"].items())
            )
            if column["sampling"]
            else "–",
        ]
        for column in columns
    ]
    parts += ["<h2>Sampling settings</h2>", _table(["evaluation", "sampling"], settings)]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Staria comparison</title>
<style>{PAGE_STYLE}</style></head>
<body>
{chr(10).join(parts)}
</body></html>
"""
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
