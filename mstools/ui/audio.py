"""Audio helpers: write wav files, embed players, draw spectrograms.

>>> write_wav("outputs/jazz.wav", out.audio[0], out.sample_rate).name
'jazz.wav'
>>> fig = spectrogram(out.audio[0], out.sample_rate)     # a plotly figure: fig.show() draws it
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mstools.core.fileio import atomic_write_bytes

__all__ = ["write_wav", "wav_bytes", "audio_html", "spectrogram", "player", "players", "Player"]


def _mono_numpy(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    x = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"give one clip [C, N], not a batch {x.shape}")
        x = x[0]
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"audio must be [N], [C, N] or [1, C, N], got {x.shape}")
    return x.astype(np.float32)


def wav_bytes(audio: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM wav of a clip (mono mix), peak-normalised only if it would clip."""
    import soundfile as sf  # lazy: audio file I/O, only when files are read or written
    x = _mono_numpy(audio)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 1.0:
        x = x / peak
    buf = io.BytesIO()
    sf.write(buf, x, int(sample_rate), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | os.PathLike, audio: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write a clip as a wav file atomically (temp file in the same folder, then rename)."""
    return atomic_write_bytes(path, wav_bytes(audio, sample_rate))


def audio_html(audio: torch.Tensor | np.ndarray, sample_rate: int, label: str = "") -> str:
    """A self-contained ``<audio>`` player (wav embedded as base64) under a caption naming it."""
    b64 = base64.b64encode(wav_bytes(audio, sample_rate)).decode()
    cap = (f"<figcaption class='cap' style='font-size:.9em;margin-bottom:2px'>{html.escape(label)}"
           f"</figcaption>") if label else ""
    return (f"<figure class='clip' style='display:inline-block;margin:.3em 1.2em .3em 0'>{cap}"
            f"<audio controls preload='none' src='data:audio/wav;base64,{b64}'></audio></figure>")


class Player:
    """One or more labelled audio players for a notebook: each player sits under a caption that
    names what it holds (e.g. ``"unsteered · seed 0 · clip 3 · genre read: rock"``).

    Displays as HTML (``<figure><figcaption>label</figcaption><audio ...>``, wav embedded), so the
    caption survives export to HTML and viewers that drop the audio; the plain-text form lists the
    captions.

    >>> p = players([("a tone", torch.zeros(1, 800))], 8000)
    >>> p.labels, "a tone" in p._repr_html_()
    (['a tone'], True)
    """

    def __init__(self, clips: Sequence[tuple[str, torch.Tensor | np.ndarray]], sample_rate: int):
        self.clips = [(str(label), audio) for label, audio in clips]
        if not self.clips:
            raise ValueError("give at least one (label, audio) pair")
        for label, _ in self.clips:
            if not label.strip():
                raise ValueError("every player needs a caption naming what it holds")
        self.sample_rate = int(sample_rate)

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.clips]

    def _repr_html_(self) -> str:
        return "<div>" + "".join(audio_html(a, self.sample_rate, label) for label, a in self.clips) + "</div>"

    def __repr__(self) -> str:
        secs = [len(_mono_numpy(a)) / self.sample_rate for _, a in self.clips]
        return "\n".join(f"[audio] {label} ({s:.1f} s)" for (label, _), s in zip(self.clips, secs))


def player(audio: torch.Tensor | np.ndarray, sample_rate: int, label: str) -> Player:
    """A labelled audio player for notebooks (``label`` says what the clip is)."""
    return Player([(label, audio)], sample_rate)


def players(clips: Sequence[tuple[str, torch.Tensor | np.ndarray]], sample_rate: int) -> Player:
    """A row of labelled players: ``players([("unsteered", a), ("steered", b)], sr)``."""
    return Player(clips, sample_rate)


def spectrogram(audio: torch.Tensor | np.ndarray, sample_rate: int, *, n_fft: int = 1024,
                hop: int | None = None, title: str = "", max_hz: float | None = None):
    """Log-magnitude spectrogram as a plotly heatmap (time in seconds, frequency in Hz)."""
    import plotly.graph_objects as go  # lazy: display libraries load when something is drawn
    x = torch.from_numpy(_mono_numpy(audio))
    hop = hop or n_fft // 4
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-6)
    freqs = np.linspace(0, sample_rate / 2, spec.shape[0])
    times = np.arange(spec.shape[1]) * hop / sample_rate
    if max_hz is not None:
        keep = freqs <= max_hz
        freqs, db = freqs[keep], db[torch.from_numpy(keep)]
    fig = go.Figure(go.Heatmap(z=db.numpy(), x=times, y=freqs, colorscale="Magma",
                               zmin=float(db.max()) - 80, colorbar=dict(title="dB")))
    fig.update_layout(title=title, xaxis_title="time (s)", yaxis_title="frequency (Hz)",
                      height=300, margin=dict(l=60, r=20, t=40, b=40))
    return fig
