"""SynthCodec: a deterministic synthesiser behind audiocraft's ``CompressionModel`` API.

Each frame (``hop = sample_rate / frame_rate`` samples) is rendered from its own four tokens only::

    frame = gain[loudness] * (voice[pitch, timbre] + drum[drums])

- ``voice[pitch, timbre]``: harmonic tone. Pitch token ``p`` sounds near C4 * 2**(p/12), rounded to a
  multiple of the frame rate so every frame holds whole periods (held notes join without clicks).
  Timbre tokens ``0..7`` are ``2 * instrument + articulation`` (piano, brass, strings, synth; onset
  frames attack from silence, held frames sustain); tokens ``8..31`` are extra timbres.
- ``drum[d]``: ``0`` is silence; ``1..6`` kick, snare, hat, tom, rim, shaker; ``7..31`` noise bursts.
- ``gain[l]``: ``-40 + 1.5 * l`` dB.

No learned weights: the tables are built from fixed formulas and seeds at construction.
``encode`` analyses each frame by matched filtering against every ``voice + drum`` pair
(``32 * 32 * 32`` candidates, scored via two matrix products) and reads the gain by projection.
For audio rendered by :meth:`SynthCodec.decode` the round trip is exact; for other audio it returns
the best-matching tokens per frame (a best effort: the synth's nearest description, not a codec).

Example:

>>> codec = SynthCodec()
>>> codes = torch.randint(0, 32, (2, 4, 5))
>>> wav = codec.decode(codes)          # [2, 1, 5 * 1600]
>>> wav.shape
torch.Size([2, 1, 8000])
>>> codec.encode(wav)[0].equal(codes)
True
"""
from __future__ import annotations

import math
import typing as tp

import numpy as np
import torch
from audiocraft.models.encodec import CompressionModel
from audiocraft.quantization.base import QuantizedResult

from mstools.testbed.music import CARD, FRAME_RATE, NUM_CODEBOOKS, SAMPLE_RATE

__all__ = ["SynthCodec", "GAIN_DB"]

GAIN_DB = -40.0 + 1.5 * np.arange(CARD)
_DRUM_LEVEL = 0.6
_VOICE_RMS = 0.3


def _pitch_hz(card: int, frame_rate: int) -> np.ndarray:
    equal_tempered = 261.6256 * 2.0 ** (np.arange(card) / 12.0)
    hz = np.round(equal_tempered / frame_rate) * frame_rate
    if len(np.unique(hz)) != card:
        raise ValueError("pitch table collides: raise the frame rate or lower the cardinality")
    return hz


def _envelope(kind: str, onset: bool, t: np.ndarray) -> np.ndarray:
    """Amplitude envelope over one frame; held frames sustain at the level an onset frame ends at."""
    sustain = {"piano": 0.35, "brass": 0.8, "strings": 1.0, "synth": 0.9, "extra": 0.8}[kind]
    if not onset:
        return np.full_like(t, sustain)
    attack = {"piano": 0.003, "brass": 0.025, "strings": 0.06, "synth": 0.002, "extra": 0.01}[kind]
    rise = np.clip(t / attack, 0.0, 1.0)
    if kind == "piano":
        return rise * (sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0) / 0.03))
    if kind == "brass":
        return rise * (sustain + 0.4 * np.exp(-np.maximum(t - attack, 0) / 0.02))
    return rise * sustain


def _harmonics(kind: str, rng: np.random.Generator) -> np.ndarray:
    k = np.arange(1, 25)
    if kind == "piano":
        amp = 1.0 / k ** 2
    elif kind == "brass":
        amp = np.exp(-((k - 3.0) ** 2) / 18.0) / np.sqrt(k)
    elif kind == "strings":
        amp = 1.0 / k
    elif kind == "synth":
        amp = np.where(k % 2 == 1, 1.0 / k, 0.0)
    else:
        amp = rng.random(len(k)) / k
    return amp


def _voice_table(card: int, frame_rate: int, sample_rate: int) -> np.ndarray:
    hop = sample_rate // frame_rate
    t = np.arange(hop) / sample_rate
    hz = _pitch_hz(card, frame_rate)
    kinds = ["piano", "brass", "strings", "synth"]
    table = np.zeros((card, card, hop))
    for timbre in range(card):
        kind = kinds[timbre // 2] if timbre < 8 else "extra"
        amp = _harmonics(kind, np.random.default_rng(1000 + timbre))
        env = _envelope(kind, onset=timbre % 2 == 0, t=t)
        for pitch in range(card):
            k = np.arange(1, len(amp) + 1)
            keep = k * hz[pitch] < 0.45 * sample_rate
            partials = np.sin(2 * np.pi * np.outer(k[keep] * hz[pitch], t))
            tone = amp[keep] @ partials
            tone *= _VOICE_RMS / (np.sqrt(np.mean(tone ** 2)) + 1e-12)
            table[pitch, timbre] = env * tone
    return table


def _bandpass_noise(rng: np.random.Generator, n: int, lo: float, hi: float, sample_rate: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spec[(freqs < lo) | (freqs > hi)] = 0
    noise = np.fft.irfft(spec, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _drum_table(card: int, frame_rate: int, sample_rate: int) -> np.ndarray:
    hop = sample_rate // frame_rate
    t = np.arange(hop) / sample_rate
    table = np.zeros((card, hop))

    def sweep(f_start: float, f_end: float, tau: float) -> np.ndarray:
        freq = f_end + (f_start - f_end) * np.exp(-t / tau)
        return np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)

    for token in range(1, card):
        rng = np.random.default_rng(2000 + token)
        if token == 1:    # kick
            x = sweep(150, 50, 0.03) * np.exp(-t / 0.05)
        elif token == 2:  # snare
            x = 0.6 * _bandpass_noise(rng, hop, 1000, 7000, sample_rate) * np.exp(-t / 0.04)
            x += 0.6 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.03)
        elif token == 3:  # hat
            x = 0.5 * _bandpass_noise(rng, hop, 6000, 7900, sample_rate) * np.exp(-t / 0.015)
        elif token == 4:  # tom
            x = sweep(220, 130, 0.05) * np.exp(-t / 0.07)
        elif token == 5:  # rim
            x = (0.7 * np.sin(2 * np.pi * 1700 * t) + 0.5 * np.sin(2 * np.pi * 820 * t)) * np.exp(-t / 0.008)
        elif token == 6:  # shaker
            x = 0.5 * _bandpass_noise(rng, hop, 3500, 7000, sample_rate)
            x *= np.clip(t / 0.012, 0, 1) * np.exp(-t / 0.045)
        else:             # extra noise bursts spread over the spectrum
            centre = 150.0 * (7500 / 150.0) ** ((token - 7) / (card - 8))
            x = 0.5 * _bandpass_noise(rng, hop, centre / 1.4, min(centre * 1.4, 7900), sample_rate)
            x *= np.exp(-t / 0.03)
        fade = np.clip((hop - 1 - np.arange(hop)) / (0.004 * sample_rate), 0, 1)
        table[token] = _DRUM_LEVEL * x * fade
    return table


class SynthCodec(CompressionModel):
    """Deterministic synthesiser codec with ``NUM_CODEBOOKS`` streams of ``CARD`` tokens.

    Args:
        sample_rate: audio sample rate (Hz).
        frame_rate: frames per second; ``sample_rate`` must be a multiple of it.
        card: tokens per codebook.

    Shapes: ``decode(codes [B, K, T]) -> [B, 1, T * hop]``; ``encode(wav [B, 1, N]) -> ([B, K, ceil(N / hop)], None)``.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, frame_rate: int = FRAME_RATE, card: int = CARD):
        super().__init__()
        if sample_rate % frame_rate:
            raise ValueError(f"sample_rate {sample_rate} must be a multiple of frame_rate {frame_rate}")
        self._sample_rate, self._frame_rate, self._card = int(sample_rate), int(frame_rate), int(card)
        self.hop = self._sample_rate // self._frame_rate
        voice = torch.from_numpy(_voice_table(card, frame_rate, sample_rate))     # [P, I, hop]
        drum = torch.from_numpy(_drum_table(card, frame_rate, sample_rate))       # [D, hop]
        gain = torch.from_numpy(10.0 ** (GAIN_DB[:card] / 20.0))                  # [L]
        self.register_buffer("voice", voice.float(), persistent=False)
        self.register_buffer("drum", drum.float(), persistent=False)
        self.register_buffer("gain", gain.float(), persistent=False)
        # For analysis: float64 atoms and norms of every voice + drum pair.
        flat = voice.reshape(card * card, self.hop)
        cross = flat @ drum.T                                                      # [P*I, D]
        sq = (flat ** 2).sum(-1)[:, None] + (drum ** 2).sum(-1)[None, :] + 2 * cross
        self.register_buffer("_voice64", flat, persistent=False)
        self.register_buffer("_drum64", drum, persistent=False)
        self.register_buffer("_pair_norm", sq.sqrt(), persistent=False)

    # -- CompressionModel API -------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1

    @property
    def frame_rate(self) -> float:
        return float(self._frame_rate)

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def cardinality(self) -> int:
        return self._card

    @property
    def num_codebooks(self) -> int:
        return NUM_CODEBOOKS

    @property
    def total_codebooks(self) -> int:
        return NUM_CODEBOOKS

    def set_num_codebooks(self, n: int) -> None:
        """Only the full set of codebooks is supported (the synth needs all four streams)."""
        if n != NUM_CODEBOOKS:
            raise ValueError(f"SynthCodec always uses {NUM_CODEBOOKS} codebooks, got {n}")

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3 or codes.shape[1] != NUM_CODEBOOKS:
            raise ValueError(f"codes must be [B, {NUM_CODEBOOKS}, T], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self._card):
            raise ValueError(f"codes must lie in [0, {self._card}); got min {int(codes.min())}, "
                             f"max {int(codes.max())} (special or unfilled tokens cannot be rendered)")
        return codes.long()

    def decode(self, codes: torch.Tensor, scale: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """Render codes ``[B, K, T]`` to audio ``[B, 1, T * hop]`` (float32; grammar clips peak below 1)."""
        if scale is not None:
            raise ValueError("SynthCodec has no scale; pass scale=None")
        codes = self._check_codes(codes).to(self.voice.device)
        pitch, timbre, drums, loud = codes.unbind(1)                                 # [B, T] each
        frames = self.gain[loud][..., None] * (self.voice[pitch, timbre] + self.drum[drums])
        return frames.reshape(codes.shape[0], 1, -1)

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Continuous latent of codes ``[B, K, T]``: concatenated one-hots ``[B, K * card, T]``."""
        codes = self._check_codes(codes)
        onehot = torch.nn.functional.one_hot(codes, self._card).float()             # [B, K, T, card]
        return onehot.permute(0, 1, 3, 2).reshape(codes.shape[0], -1, codes.shape[-1])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tp.Tuple[torch.Tensor, tp.Optional[torch.Tensor]]:
        """Analyse audio ``[B, 1, N]`` (at ``sample_rate``) into codes ``[B, K, ceil(N / hop)]``.

        Exact for audio rendered by :meth:`decode`; best effort (nearest synth frame) otherwise.
        A trailing partial frame is zero-padded. Returns ``(codes, None)``.
        """
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"audio must be mono [B, 1, N] at {self._sample_rate} Hz, got {tuple(x.shape)}; "
                             "use audiocraft.data.audio_utils.convert_audio to resample / downmix")
        B, _, N = x.shape
        T = -(-N // self.hop)
        x = torch.nn.functional.pad(x.double(), (0, T * self.hop - N)).reshape(B * T, self.hop)
        x = x.to(self._voice64.device)
        card = self._card
        out = torch.empty(B * T, NUM_CODEBOOKS, dtype=torch.long)
        for start in range(0, B * T, 128):
            xs = x[start:start + 128]
            cv = xs @ self._voice64.T                                                  # [F, P*I]
            cd = xs @ self._drum64.T                                                   # [F, D]
            score = (cv[:, :, None] + cd[:, None, :]) / self._pair_norm                # [F, P*I, D]
            best = score.reshape(len(xs), -1).argmax(-1)
            vi, d = best // card, best % card
            atom = self._voice64[vi] + self._drum64[d]                                 # [F, hop]
            g = (xs * atom).sum(-1) / (atom ** 2).sum(-1)
            db = 20 * torch.log10(g.clamp_min(1e-12))
            loud = (db[:, None] - torch.from_numpy(GAIN_DB[:card])).abs().argmin(-1)
            out[start:start + len(xs)] = torch.stack([vi // card, vi % card, d, loud], -1).cpu()
        return out.reshape(B, T, NUM_CODEBOOKS).permute(0, 2, 1).contiguous(), None

    def forward(self, x: torch.Tensor) -> QuantizedResult:
        """Encode then decode audio ``[B, 1, N]``; ``bandwidth`` in kb/s per item."""
        codes, _ = self.encode(x)
        recon = self.decode(codes)[..., : x.shape[-1]]
        kbps = NUM_CODEBOOKS * math.log2(self._card) * self._frame_rate / 1000.0
        return QuantizedResult(x=recon, codes=codes, bandwidth=torch.full((x.shape[0],), kbps))
