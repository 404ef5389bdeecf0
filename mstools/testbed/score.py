"""Score codes with the procedural grammar itself: labels per factor and log-likelihood.

The grammar of :mod:`mstools.testbed.music` is a probabilistic process: labels (uniform), phase
offset (uniform), one start degree per phrase (uniform over 11), one accent bit per note (1/2);
given those, every token is determined. To score imperfect codes (model generations, steered clips)
each token is emitted by that process with probability ``1 - NOISE`` and uniformly at random over the
``CARD`` tokens with probability ``NOISE``. :func:`score` finds the single most likely explanation
(Viterbi-style max over labels, phase, start degrees and accents; phrases and notes are independent
given the phase, so the max is exact) and reports:

- one column per factor: the label of the best explanation, or ``"none"`` when more than
  ``NONE_ERROR_RATE`` of the tokens that factor governs disagree with it (genre: pitch + drums;
  instrument: timbre; dynamics: loudness; tempo: all codebooks);
- ``loglik``: log-probability of the codes and the best explanation, per frame (higher is better;
  fresh procedural clips score about -0.5 to -0.9, every wrong token costs about 7.4 nats / T);
- ``error_rate``: share of all tokens that disagree with the best explanation.

No classifier is trained: the scores come from the grammar's definition only.

Example:

>>> from mstools.testbed.music import sample_clip
>>> clip = sample_clip(0, frames=60, genre="jazz", tempo="slow")
>>> df = score(clip.codes)
>>> df.loc[0, ["genre", "tempo"]].tolist()
['jazz', 'slow']
>>> score(clip.codes[None].repeat(2, 1, 1), segment_seconds=3.0)[["clip", "segment", "genre"]].values.tolist()
[[0, 0, 'jazz'], [0, 1, 'jazz'], [1, 0, 'jazz'], [1, 1, 'jazz']]
"""
from __future__ import annotations

import math
import typing as tp

import numpy as np
import pandas as pd
import torch

from mstools.testbed.music import (
    CARD, CB_DRUMS, CB_LOUDNESS, CB_PITCH, CB_TIMBRE, DRUM_NONE, DYNAMICS, FACTORS, FRAME_RATE, GENRE_SPEC,
    GENRES, INSTRUMENTS, LOUDNESS_HELD_DROP, LOUDNESS_ONSET, NOTE_FRAMES, NOTES_PER_PHRASE, NUM_CODEBOOKS,
    NUM_START_DEGREES, RUN_SPAN, SCALES, TEMPOS,
)

__all__ = ["score", "score_segment", "adherence", "NOISE", "NONE_ERROR_RATE"]

NOISE = 0.02
NONE_ERROR_RATE = 0.2
_LOG_HIT = math.log(1 - NOISE + NOISE / CARD)
_LOG_MISS = math.log(NOISE / CARD)


def _ll(hits: np.ndarray, total: np.ndarray | int) -> np.ndarray:
    return hits * _LOG_HIT + (total - hits) * _LOG_MISS


def _group_matrix(index: np.ndarray) -> np.ndarray:
    """One-hot ``[T, G]`` of a 0-based group index per frame (sums frames per phrase / note)."""
    return np.eye(index.max() + 1)[index]


def _expected_pitch() -> dict[str, np.ndarray]:
    """Per genre, pitch token ``[start, pos]`` for every start degree and phrase position."""
    out = {}
    for genre, spec in GENRE_SPEC.items():
        starts = np.arange(NUM_START_DEGREES) + (RUN_SPAN if spec.direction < 0 else 0)
        degrees = starts[:, None] + spec.direction * np.arange(NOTES_PER_PHRASE)[None, :]
        out[genre] = np.asarray(SCALES[spec.scale])[degrees]
    return out


_PITCH = _expected_pitch()


def score_segment(codes: np.ndarray | torch.Tensor) -> dict:
    """Best grammar explanation of one segment ``[K, T]``: labels, ``loglik`` per frame, ``error_rate``."""
    x = np.asarray(codes, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != NUM_CODEBOOKS or x.shape[1] < 1:
        raise ValueError(f"segment must be [{NUM_CODEBOOKS}, T>=1], got {x.shape}")
    T = x.shape[1]
    best: dict | None = None
    for tempo in TEMPOS:
        length = NOTE_FRAMES[tempo]
        for offset in range(NOTES_PER_PHRASE * length):
            u = np.arange(T) + offset
            held = (u % length != 0).astype(np.int64)
            note = u // length
            pos = note % NOTES_PER_PHRASE
            notes = _group_matrix(note - note[0])                                   # [T, N]
            phrases = _group_matrix(note // NOTES_PER_PHRASE - note[0] // NOTES_PER_PHRASE)  # [T, P]

            # timbre: 2 * instrument + held
            timbre_hits = np.array([(x[CB_TIMBRE] == 2 * i + held).sum() for i in range(len(INSTRUMENTS))])
            timbre_ll = _ll(timbre_hits, T)
            # loudness: per note, max over the accent bit
            dyn_ll, dyn_hits = [], []
            for dyn in DYNAMICS:
                per_accent = np.stack([(x[CB_LOUDNESS] == LOUDNESS_ONSET[dyn] + a - LOUDNESS_HELD_DROP * held)
                                       for a in (0, 1)]).astype(float) @ notes      # [2, N]
                n_frames = notes.sum(0)
                hits = per_accent.max(0)
                dyn_ll.append((_ll(hits, n_frames) + math.log(0.5)).sum())
                dyn_hits.append(hits.sum())
            # genre: drums (deterministic) + pitch (per phrase, max over start degree)
            genre_ll, genre_hits = [], []
            for genre in GENRES:
                drums = np.where(held == 1, DRUM_NONE, np.asarray(GENRE_SPEC[genre].drum_cycle)[pos])
                drum_hits = (x[CB_DRUMS] == drums).sum()
                expected = _PITCH[genre][:, pos]                                      # [S, T]
                per_start = (x[CB_PITCH][None, :] == expected).astype(float) @ phrases  # [S, P]
                hits = per_start.max(0)
                pitch_ll = (_ll(hits, phrases.sum(0)) - math.log(NUM_START_DEGREES)).sum()
                genre_ll.append(_ll(drum_hits, T) + pitch_ll)
                genre_hits.append((drum_hits + hits.sum()))
            gi, ii, di = int(np.argmax(genre_ll)), int(np.argmax(timbre_ll)), int(np.argmax(dyn_ll))
            total = (genre_ll[gi] + timbre_ll[ii] + dyn_ll[di]
                     - math.log(len(GENRES)) - math.log(len(TEMPOS)) - math.log(len(INSTRUMENTS))
                     - math.log(len(DYNAMICS)) - math.log(NOTES_PER_PHRASE * length))
            if best is None or total > best["total"]:
                best = {
                    "total": total,
                    "labels": {"genre": GENRES[gi], "tempo": tempo, "instrument": INSTRUMENTS[ii],
                               "dynamics": DYNAMICS[di]},
                    "errors": {"genre": 1 - genre_hits[gi] / (2 * T), "instrument": 1 - timbre_hits[ii] / T,
                               "dynamics": 1 - dyn_hits[di] / T},
                    "all_hits": genre_hits[gi] + timbre_hits[ii] + dyn_hits[di],
                }
    assert best is not None
    error_rate = 1 - best["all_hits"] / (NUM_CODEBOOKS * T)
    labels = dict(best["labels"])
    for factor in ("genre", "instrument", "dynamics"):
        if best["errors"][factor] > NONE_ERROR_RATE:
            labels[factor] = "none"
    if error_rate > NONE_ERROR_RATE:
        labels["tempo"] = "none"
    return {**labels, "loglik": best["total"] / T, "error_rate": float(error_rate)}


def score(codes: torch.Tensor | np.ndarray, segment_seconds: float | None = None) -> pd.DataFrame:
    """Score clips with the procedural grammar.

    Args:
        codes: ``[B, K, T]`` or ``[K, T]`` integer codes.
        segment_seconds: if given, each clip is cut into consecutive segments of this length
            (a trailing piece shorter than half a segment is dropped) and scored independently.

    Returns:
        DataFrame with one row per clip and segment: ``clip, segment, start_s, end_s, genre, tempo,
        instrument, dynamics, loglik, error_rate`` (labels are ``"none"`` when no label fits).

    Example:
        >>> from mstools.testbed.music import make_dataset, stack_codes
        >>> df = score(stack_codes(make_dataset(4, frames=60, seed=0)))
        >>> list(df.columns)[:5]
        ['clip', 'segment', 'start_s', 'end_s', 'genre']
    """
    x = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] != NUM_CODEBOOKS:
        raise ValueError(f"codes must be [B, {NUM_CODEBOOKS}, T] or [{NUM_CODEBOOKS}, T], got {x.shape}")
    T = x.shape[-1]
    seg = T if segment_seconds is None else max(1, int(round(segment_seconds * FRAME_RATE)))
    bounds = [(s, min(s + seg, T)) for s in range(0, T, seg)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < seg / 2:
        bounds = bounds[:-1]
    rows = []
    for b in range(x.shape[0]):
        for i, (s, e) in enumerate(bounds):
            rows.append({"clip": b, "segment": i, "start_s": s / FRAME_RATE, "end_s": e / FRAME_RATE,
                         **score_segment(x[b, :, s:e])})
    columns = ["clip", "segment", "start_s", "end_s", *FACTORS, "loglik", "error_rate"]
    return pd.DataFrame(rows, columns=columns)


def adherence(scores: pd.DataFrame, labels: tp.Sequence[dict[str, str]]) -> dict[str, float]:
    """Share of clips whose grammar label equals the requested label, per requested factor."""
    out = {}
    for factor in FACTORS:
        wanted = [lab.get(factor) for lab in labels]
        if any(w is None for w in wanted):
            continue
        out[factor] = float(np.mean(scores[factor].to_numpy() == np.asarray(wanted)))
    return out
