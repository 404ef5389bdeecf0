"""Audio files, players, spectrograms and the HTML report."""
from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import torch

from mstools.ui.audio import spectrogram, write_wav
from mstools.ui.report import Report


def _tone(freq=440.0, sr=16000, seconds=1.0):
    t = torch.arange(int(sr * seconds)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)[None]


def test_wav_round_trip(tmp_path):
    x = _tone()
    p = write_wav(tmp_path / "a.wav", x, 16000)
    y, sr = sf.read(p)
    assert sr == 16000 and len(y) == x.shape[-1]
    np.testing.assert_allclose(y, x[0].numpy(), atol=1 / 32767 + 1e-6)
    assert not list(tmp_path.glob(".*tmp"))


def test_spectrogram_peak_at_tone_frequency():
    fig = spectrogram(_tone(1000.0), 16000)
    z = np.asarray(fig.data[0].z)
    freqs = np.asarray(fig.data[0].y)
    assert abs(freqs[z.mean(axis=1).argmax()] - 1000.0) < 16000 / 1024 * 1.5


def test_report_is_self_contained(tmp_path):
    import pandas as pd
    import plotly.graph_objects as go
    r = Report("t")
    r.heading("h")
    r.text("uses `code`")
    r.figure(go.Figure(go.Scatter(y=[1, 2])))
    r.figure(go.Figure(go.Scatter(y=[3, 4])))
    r.table(pd.DataFrame({"a": [1.23456]}))
    r.audio([("tone", _tone(), 16000)])
    html = r.write(tmp_path / "r.html").read_text()
    assert html.count("<audio") == 1 and "data:audio/wav;base64," in html
    assert html.count("plotly.js v") <= 2 and "<code>code</code>" in html and "1.235" in html
    assert "<script src=" not in html and html.count("<script>") >= 1  # works offline
    b64 = html.split("data:audio/wav;base64,")[1].split("'")[0]
    import base64
    y, sr = sf.read(io.BytesIO(base64.b64decode(b64)))
    assert sr == 16000 and len(y) == 16000
