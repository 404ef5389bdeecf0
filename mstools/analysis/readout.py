"""Per-second readout: what a direction or a fitted probe reads in each second of a clip.

Given codes ``[B, K, T]`` (generated, steered or not), :func:`per_second` teacher-forces them
through the model as it is (no steering attached), caches one hook, and groups the positions by
time. A position's time is ``cache.seconds`` (``step / frame_rate``, see :mod:`mstools.core.timeline`),
never its tensor index. Second ``k`` holds the positions with ``k * seconds <= t < (k + 1) * seconds``;
the ``K - 1`` trailing delay-pattern steps whose time lies at or after the clip's end
(``t >= T / frame_rate``) belong to no second and are dropped.

The readout is either

- a **direction** ``[D]`` (a tensor, an array, or anything with a 1-d ``.vector``, such as
  :class:`mstools.analysis.directions.Direction`): normalised to unit L2 norm; ``value`` is the mean over the
  second's positions of ``activation . direction``;
- a **callable** ``features [N, D] -> probabilities`` (a fitted probe): it is given the mean
  activation of each second (float32 tensor, one row per clip and second, the pooled features that
  probes are fitted on) and returns an array ``[N, C]`` / ``[N]`` or a DataFrame with N rows. Array
  columns are named after ``readout.classes`` when it has them (else ``p0, p1, ...``); with two or
  more columns a ``label`` column holds the name of the largest.

For ``blocks.{l}.attn.hook_z`` the activation ``[H, Dh]`` is flattened to ``H * Dh``.

Example (testbed, projection on a direction):

>>> import torch, mstools
>>> model = mstools.load_musicgen("testbed")
>>> out = model.generate(["fast rock with brass"], duration=3.0, seed=0)
>>> v = torch.randn(model.d_model)
>>> df = per_second(model, out.codes, ["fast rock with brass"], "blocks.2.hook_resid_post", v)
>>> list(df.columns), len(df)
(['clip', 'second', 't0', 't1', 'n_steps', 'value'], 3)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["per_second", "second_index", "probe_readout"]

#: Tolerance (seconds) when comparing a position's time with a second boundary.
EPS = 1e-9

Readout = Any  # Tensor [D] | np.ndarray [D] | object with .vector [D] | Callable[[Tensor], Any]


def second_index(seconds: torch.Tensor, width: float = 1.0) -> torch.Tensor:
    """Bucket of each time: ``floor(t / width)`` (with a 1e-9 s tolerance at the boundaries).

    Args:
        seconds: float tensor ``[S]``, time of each position.
        width: bucket width in seconds.

    Returns:
        LongTensor ``[S]``.

    >>> second_index(torch.tensor([0.0, 0.9, 1.0, 2.5]), 1.0).tolist()
    [0, 0, 1, 2]
    """
    return torch.floor((seconds.to(torch.float64) + EPS) / float(width)).to(torch.long)


def _as_direction(readout: Readout, dim: int, hook: str) -> torch.Tensor | None:
    """The readout as a unit float64 vector ``[D]``, or None when it is a callable."""
    vec = getattr(readout, "vector", readout)
    if isinstance(vec, np.ndarray):
        vec = torch.from_numpy(vec)
    if not isinstance(vec, torch.Tensor):
        if callable(readout):
            return None
        raise TypeError(f"readout must be a direction [D] (tensor/array/.vector) or a callable "
                        f"features [N, D] -> probabilities, got {type(readout).__name__}")
    v = vec.detach().reshape(-1).to(torch.float64).cpu()
    if v.numel() != dim:
        raise ValueError(f"the readout direction has {v.numel()} entries but {hook!r} has "
                         f"{dim} features; use a direction made at this hook")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("the readout direction contains NaN or inf")
    n = float(torch.linalg.vector_norm(v))
    if n == 0.0:
        raise ValueError("the readout direction is all zeros; it reads nothing")
    return v / n


def _columns(readout: Callable, out: Any, n: int) -> pd.DataFrame:
    """The callable's output as a DataFrame with ``n`` rows (class columns, plus ``label``)."""
    if isinstance(out, pd.DataFrame):
        df = out.reset_index(drop=True)
    else:
        arr = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"the readout callable must return [N] or [N, C] values, got shape "
                             f"{arr.shape}")
        classes = getattr(readout, "classes", None)
        if classes is None:
            classes = getattr(getattr(readout, "__self__", None), "classes_", None)
        if classes is not None and len(classes) == arr.shape[1]:
            names = [str(c) for c in classes]
        else:
            names = ["value"] if arr.shape[1] == 1 else [f"p{i}" for i in range(arr.shape[1])]
        df = pd.DataFrame(arr, columns=names)
    if len(df) != n:
        raise ValueError(f"the readout callable returned {len(df)} rows for {n} feature rows; it "
                         f"must return one row per input row")
    numeric = df.select_dtypes("number")
    if numeric.shape[1] >= 2 and "label" not in df.columns:
        df["label"] = numeric.idxmax(axis=1).to_numpy()
    return df


def per_second(model: Any, codes: torch.Tensor, prompts: Sequence[str | None] | None, hook: str,
               readout: Readout, seconds: float = 1.0) -> pd.DataFrame:
    """Read ``readout`` at ``hook`` in every ``seconds``-long slice of every clip.

    Args:
        model: a :class:`mstools.HookedMusicGen` (used as it is: attach no steering around this
            call, the readout is meant to see the unsteered model's activations).
        codes: LongTensor ``[B, K, T]`` (e.g. ``generate(...).codes``).
        prompts: one text per clip (None: unconditional), as they were generated; a single
            string or None applies to every clip.
        hook: hook name, e.g. ``"blocks.2.hook_resid_post"``.
        readout: a direction ``[D]`` or a callable ``features [N, D] -> probabilities`` (see the
            module docstring).
        seconds: slice width in seconds (> 0).

    Returns:
        DataFrame, one row per clip and slice: ``clip``, ``second`` (slice index), ``t0``, ``t1``
        (slice bounds in seconds; the last one ends at the clip's end), ``n_steps`` (positions
        averaged), then ``value`` (direction) or the callable's columns (+ ``label``).

    Raises:
        ValueError: bad ``seconds``, a direction of the wrong size or all zeros, or a callable that
            returns the wrong number of rows.

    Clips are teacher-forced in groups that share a prompt, so a clip's activations never depend
    on the other prompts (cross-attention has no padding mask).

    >>> df = per_second(model, out.codes, ["jazz"], "blocks.1.hook_resid_post", jazz["blocks.1.hook_resid_post"])
    >>> df["second"].tolist()
    [0, 1]
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number of seconds, got {seconds!r}")
    names = model.check_names(hook)
    if len(names) != 1:
        raise ValueError(f"give one hook name, not a pattern matching {len(names)} hooks: {hook!r}")
    hook = names[0]
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        raise ValueError(f"codes must be a LongTensor [B, K, T], got "
                         f"{getattr(codes, 'shape', type(codes).__name__)}")
    batch, _, frames = codes.shape
    if isinstance(prompts, str) or prompts is None:
        prompts = [prompts] * batch
    prompts = list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for {batch} clips; give one per clip")
    dim = int(np.prod(model.hook_shape(hook)))
    direction = _as_direction(readout, dim, hook)

    acts = [torch.empty(0)] * batch
    groups: dict[str | None, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    cache = None
    for p, rows in groups.items():
        _, cache = model.run_with_cache(codes[rows], [p] * len(rows), names_filter=[hook])
        x = cache[hook].detach().float().cpu()
        x = x.reshape(x.shape[0], x.shape[1], -1)
        for j, i in enumerate(rows):
            acts[i] = x[j]
    assert cache is not None
    t = cache.seconds.cpu()
    end = frames / float(cache.frame_rate)
    inside = t < end - EPS
    bucket = second_index(t, seconds)
    n_slices = int(math.ceil(end / seconds - EPS))

    pooled, meta = [], []
    for clip in range(batch):
        for k in range(n_slices):
            sel = inside & (bucket == k)
            n = int(sel.sum())
            if n == 0:
                continue
            x = acts[clip][sel].to(torch.float64)
            if direction is not None:
                pooled.append(float((x @ direction).mean()))
            else:
                pooled.append(x.mean(0))
            meta.append(dict(clip=clip, second=k, t0=k * seconds, t1=min((k + 1) * seconds, end),
                             n_steps=n))
    df = pd.DataFrame(meta, columns=["clip", "second", "t0", "t1", "n_steps"])
    if direction is not None:
        df["value"] = pooled
        return df
    feats = torch.stack(pooled).to(torch.float32) if pooled else torch.zeros(0, dim)
    values = _columns(readout, readout(feats), len(df))
    return pd.concat([df, values], axis=1)


class _ProbeReadout:
    """Callable ``features [N, D] -> probabilities [N, C]`` with the probe's class names as ``classes``."""

    def __init__(self, probe: Any):
        if getattr(probe, "classes", None) is None:
            raise ValueError("probe_readout needs a classification probe (with classes); for a "
                             "continuous probe use its direction: mstools.analysis.directions.from_probe(probe)")
        self.probe = probe
        self.classes = list(probe.classes)
        self.hook = probe.hook

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        return torch.softmax(self.probe.scores(features).double(), dim=-1).numpy()

    def __repr__(self) -> str:
        return f"probe_readout({self.probe.method} probe of {self.probe.target!r} at {self.hook})"


def probe_readout(probe: Any) -> _ProbeReadout:
    """Turn a fitted classification probe into a readout for :func:`mstools.analysis.readout.per_second`
    and :class:`mstools.ui.widgets.SteeringPanel`: softmax of its scores, one column per class.

    Args:
        probe: a :class:`mstools.analysis.probes.Probe` with ``classes`` (e.g. from ``fit_probes``).

    Returns:
        A callable ``features [N, D] -> array [N, C]`` with attributes ``classes`` and ``hook``.

    >>> from mstools.analysis.probes import Probe
    >>> r = probe_readout(Probe("h", "genre", "logistic", torch.eye(2), torch.zeros(2), ["jazz", "rock"]))
    >>> r.classes, r(torch.tensor([[0.0, 0.0]])).tolist()
    (['jazz', 'rock'], [[0.5, 0.5]])
    """
    return _ProbeReadout(probe)
