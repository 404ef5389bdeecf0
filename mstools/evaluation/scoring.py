"""Reading generated clips: scorers (codes -> factor labels and quality) and time segments.

A *scorer* is ``codes [B, K, T] -> DataFrame`` with one row per clip (in order), one column per factor
(string labels) and a ``loglik`` quality column (higher is better). The testbed's is its grammar
(:func:`mstools.testbed.score`, declared by the model as ``model.scorer``); for real checkpoints
:func:`readout_scorer` reads factors with probes on the re-encoded output and uses the model's own
log-likelihood as quality.

>>> segment_windows(6.0, 3.0)
[(0.0, 3.0), (3.0, 6.0)]
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pandas as pd
import torch

__all__ = ["Scorer", "nll", "readout_scorer", "segment_windows", "score_segments", "factor_columns",
           "first_difference"]

Scorer = Callable[[torch.Tensor], pd.DataFrame]
_RESERVED = {"clip", "segment", "start_s", "end_s", "prompt", "loglik"}


def nll(model: Any, codes: torch.Tensor, prompts: Sequence[str | None] | None = None) -> torch.Tensor:
    """Per-clip mean negative log-likelihood of ``codes`` under the (unsteered) model: ``[B]``."""
    seq = model.to_sequence(codes)
    logits = model(codes, prompts)  # [B, K, S, card], step s predicts step s+1
    target = seq[..., 1:]
    logp = torch.log_softmax(logits[..., :-1, :].float(), dim=-1)
    tok = logp.gather(-1, target.clamp(max=model.card - 1).unsqueeze(-1)).squeeze(-1)
    valid = target != model.special_token_id
    return -(tok * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2))


def readout_scorer(model: Any, readouts: dict[str, Callable[[torch.Tensor], Sequence[str]]],
                   hook: str, *, reencode: bool = True) -> Scorer:
    """A scorer for real checkpoints: factor labels read by probes, quality = -NLL.

    Args:
        model: the unsteered HookedMusicGen.
        readouts: factor -> function from pooled activations [B, D] to labels (e.g. a fitted probe's
            ``predict``).
        hook: the hook the probes read (mean over time of the teacher-forced activations).
        reencode: decode to audio and encode again before reading (what a listener would hear).
    """
    def score(codes: torch.Tensor) -> pd.DataFrame:
        if reencode:
            codes = model.encode_audio(model.decode_codes(codes), model.sample_rate)
        _, cache = model.run_with_cache(codes, None, names_filter=[hook])
        pooled = cache[hook].float().mean(dim=1)
        out = pd.DataFrame({"clip": range(codes.shape[0])})
        for f, fn in readouts.items():
            out[f] = list(fn(pooled))
        out["loglik"] = (-nll(model, codes)).tolist()
        return out
    return score


def segment_windows(duration: float, segments: float | Sequence[tuple[float, float]] | None
                    ) -> list[tuple[float, float]]:
    """Windows ``[(t0, t1), ...]`` in seconds: the whole clip (None), consecutive pieces of a given
    length (a trailing piece shorter than half a piece is dropped), or the windows given."""
    if segments is None:
        return [(0.0, float(duration))]
    if isinstance(segments, (int, float)):
        if not segments > 0:
            raise ValueError(f"segment length must be > 0 seconds, got {segments}")
        out, t = [], 0.0
        while t < duration - 1e-9:
            end = min(duration, t + float(segments))
            if end - t >= float(segments) / 2 or not out:
                out.append((round(t, 9), round(end, 9)))
            t += float(segments)
        return out
    out = [(float(a), float(b)) for a, b in segments]
    for a, b in out:
        if not (0 <= a < b <= duration + 1e-9):
            raise ValueError(f"segment ({a}, {b}) must satisfy 0 <= t0 < t1 <= duration ({duration} s)")
    return out


def score_segments(scorer: Scorer, codes: torch.Tensor, windows: Sequence[tuple[float, float]],
                   frame_rate: float) -> pd.DataFrame:
    """Score every clip in every window: one row per (clip, segment) with ``segment, start_s, end_s``."""
    parts = []
    T = codes.shape[-1]
    for i, (a, b) in enumerate(windows):
        f0, f1 = int(round(a * frame_rate)), min(T, int(round(b * frame_rate)))
        if f1 <= f0:
            raise ValueError(f"segment ({a}, {b}) s holds no frame of a {T / frame_rate:g} s clip")
        part = scorer(codes[..., f0:f1]).reset_index(drop=True)
        if len(part) != codes.shape[0]:
            raise ValueError(f"the scorer returned {len(part)} rows for {codes.shape[0]} clips; it must "
                             "return one row per clip (pass segments to the instrument, not the scorer)")
        part = part.drop(columns=[c for c in ("clip", "segment", "start_s", "end_s") if c in part])
        part.insert(0, "end_s", b)
        part.insert(0, "start_s", a)
        part.insert(0, "segment", i)
        part.insert(0, "row", range(codes.shape[0]))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def factor_columns(scores: pd.DataFrame) -> list[str]:
    """The factor columns of a scorer's output: string-valued columns other than bookkeeping ones."""
    return [c for c in scores.columns if c not in _RESERVED and c != "row"
            and not pd.api.types.is_numeric_dtype(scores[c])]


def first_difference(codes_a: torch.Tensor, codes_b: torch.Tensor, frame_rate: float) -> torch.Tensor:
    """Time (s) of the first frame where two clips differ in any codebook, per clip (inf: identical).

    >>> a = torch.zeros(2, 4, 10, dtype=torch.long); b = a.clone(); b[1, 2, 7] = 5
    >>> first_difference(a, b, 10.0).tolist()
    [inf, 0.7]
    """
    if codes_a.shape != codes_b.shape or codes_a.dim() != 3:
        raise ValueError(f"need two [B, K, T] tensors of one shape, got {tuple(codes_a.shape)} and "
                         f"{tuple(codes_b.shape)}")
    differs = (codes_a != codes_b).any(dim=1)  # [B, T]
    T = differs.shape[1]
    first = torch.where(differs, torch.arange(T), torch.full((T,), T)).min(dim=1).values
    out = first.double() / float(frame_rate)
    return torch.where(first < T, out, torch.full_like(out, math.inf))
