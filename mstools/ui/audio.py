"""Audio helpers: write wav files, embed players, draw spectrograms.

>>> write_wav("outputs/jazz.wav", out.audio[0], out.sample_rate).name
'jazz.wav'
>>> fig = spectrogram(out.audio[0], out.sample_rate)     # a plotly figure: fig.show() draws it
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import torch

from mstools.core.fileio import atomic_write_bytes

__all__ = ["write_wav", "wav_bytes", "audio_html", "spectrogram", "player"]


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
    """A self-contained ``<audio>`` player (wav embedded as base64)."""
    b64 = base64.b64encode(wav_bytes(audio, sample_rate)).decode()
    cap = f"<div class='cap'>{label}</div>" if label else ""
    return (f"<figure class='clip'>{cap}<audio controls preload='none' "
            f"src='data:audio/wav;base64,{b64}'></audio></figure>")


def player(audio: torch.Tensor | np.ndarray, sample_rate: int):
    """An IPython audio player for notebooks."""
    from IPython.display import Audio  # lazy: display libraries load when something is drawn
    return Audio(_mono_numpy(audio), rate=int(sample_rate), normalize=True)


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
