"""Measure what steering did: target success, per-factor labels, quality, against controls.

:func:`steering` runs every trial (a :class:`~mstools.steering.Steering` setting with a target such
as ``{"genre": "jazz"}``) on the same source prompts and seeds, **batched** (one generate per seed for
all trials), beside three controls:

- ``unsteered``: the source prompts alone;
- ``random``: each trial's setting with a random direction of the same per-hook norm;
- ``prompted``: the target asked for in the prompt instead (the quality reference: steering should
  not cost much more log-likelihood than prompting the target directly).

Clips are scored by a *scorer* ``codes [B, K, T] -> DataFrame`` with one column per factor and a
``loglik`` quality column (per clip, or per clip and segment). On the testbed it is the procedural
grammar (:func:`mstools.testbed.score`); for real checkpoints, :func:`readout_scorer` reads factors
with probes on the re-encoded output and uses the NLL under the unsteered model as quality.

The result is one tidy DataFrame: ``trial, control, seed, clip, prompt, target_<factor>,
<factor> (label read), hit_<factor>, success, loglik`` plus the setting's fields (source, strength,
schedule, branch, operator, hooks). :func:`summarize` adds counts, rates and 95 % Wilson intervals.

>>> trials = [Trial("jazz diff-means L3", Steering(jazz_vec, 2.0), {"genre": "jazz"})]
>>> df = evaluate.steering(model, trials, prompts=["rock"] * 8, seeds=[0, 1], duration=6)
>>> evaluate.summarize(df)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from .steering.apply import Steering, sweep
from .steering.vector import SteeringVector

__all__ = ["Trial", "steering", "summarize", "random_like", "readout_scorer", "nll", "wilson"]

Scorer = Callable[[torch.Tensor], pd.DataFrame]


@dataclasses.dataclass
class Trial:
    """One steering condition: a name, a setting and the labels it should produce."""

    name: str
    steering: Steering
    target: dict[str, str]
    prompt_for_target: str | None = None  # for the 'prompted' control; default: target labels joined


def random_like(vector: SteeringVector, seed: int) -> SteeringVector:
    """A random direction per hook with the same norm as ``vector``'s (the equal-norm control)."""
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for h, v in vector.directions.items():
        r = torch.randn(v.shape, generator=g, dtype=torch.float32)
        dirs[h] = (r / r.norm() * v.float().norm()).to(v.dtype)
    return SteeringVector(dirs, vector.fingerprint, source=f"random({vector.source})",
                          units=vector.units, meta={"control": "random", "seed": seed})


def _default_scorer(model: Any) -> Scorer:
    if getattr(model, "model_name", "") == "testbed":
        from .testbed import score
        return score
    raise ValueError("no scorer for this model: pass scorer=readout_scorer(...) (probe readout on the "
                     "re-encoded output) or any function codes [B, K, T] -> DataFrame")


def steering(model: Any, trials: Sequence[Trial], prompts: Sequence[str | None], *,
             seeds: Sequence[int] = (0,), duration: float = 6.0, scorer: Scorer | None = None,
             segment_seconds: float | None = None, controls: Sequence[str] = ("unsteered", "random",
                                                                                "prompted"),
             progress: bool = False, **generate_kw: Any) -> pd.DataFrame:
    """Evaluate steering trials against controls. See the module docstring for the table.

    Args:
        model: a HookedMusicGen.
        trials: what to test.
        prompts: source prompts (every trial steers each of them).
        seeds: one batched generate per seed.
        duration: seconds per clip.
        scorer: codes -> DataFrame of factor labels and ``loglik`` (default: the testbed grammar).
        segment_seconds: score segments (e.g. to compare before / inside a time window).
        controls: any of ``"unsteered"``, ``"random"``, ``"prompted"``.
    """
    scorer = scorer or _default_scorer(model)
    if segment_seconds is not None:
        import functools
        scorer = functools.partial(scorer, segment_seconds=segment_seconds)
    bad = set(controls) - {"unsteered", "random", "prompted"}
    if bad:
        raise ValueError(f"unknown controls {sorted(bad)}")
    prompts = list(prompts)
    factors = sorted({f for t in trials for f in t.target})
    frames: list[pd.DataFrame] = []
    seeds = list(seeds)
    it = seeds
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(seeds, desc="evaluate", unit="seed")
    for seed in it:
        settings: list[Steering | None] = []
        meta: list[dict[str, Any]] = []
        if "unsteered" in controls:
            settings.append(None)
            meta.append(dict(trial="unsteered", control="unsteered", target={}))
        for i, t in enumerate(trials):
            settings.append(t.steering)
            meta.append(dict(trial=t.name, control="none", target=t.target))
            if "random" in controls:
                rnd = dataclasses.replace(t.steering, vector=random_like(t.steering.vector,
                                                                         seed * 1000 + i))
                settings.append(rnd)
                meta.append(dict(trial=t.name, control="random", target=t.target))
        res = sweep(model, prompts, settings, duration, seed=seed, decode=False, **generate_kw)
        scores = scorer(res.output.codes)
        table = res.rows.merge(scores, on="clip")
        for m_i, m in enumerate(meta):
            part = table[table["setting"] == m_i].copy()
            part["trial"], part["control"], part["seed"] = m["trial"], m["control"], seed
            for f in factors:
                part[f"target_{f}"] = m["target"].get(f)
            frames.append(part)
        if "prompted" in controls:
            for t in trials:
                text = t.prompt_for_target or " ".join(t.target.values())
                out = model.generate([text] * len(prompts), duration, seed=seed, decode=False,
                                     **generate_kw)
                part = scorer(out.codes)
                part["prompt"], part["trial"], part["control"], part["seed"] = text, t.name, \
                    "prompted", seed
                part["source"] = "prompt"
                for f in factors:
                    part[f"target_{f}"] = t.target.get(f)
                frames.append(part)
    df = pd.concat(frames, ignore_index=True)
    for f in factors:
        tgt = df[f"target_{f}"]
        df[f"hit_{f}"] = (df[f] == tgt).where(tgt.notna())
    hits = [f"hit_{f}" for f in factors]
    df["success"] = df[hits].apply(lambda r: bool(all(x for x in r if pd.notna(x)))
                                   if r.notna().any() else None, axis=1)
    return df


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summarize(df: pd.DataFrame, by: Sequence[str] = ("trial", "control")) -> pd.DataFrame:
    """Success rate with a Wilson interval, per-factor hit rates and mean loglik per group."""
    rows = []
    hit_cols = [c for c in df.columns if c.startswith("hit_")]
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        s = g["success"].dropna().astype(bool)
        row["n"] = len(g)
        if len(s):
            row["success"] = float(s.mean())
            row["success_lo"], row["success_hi"] = wilson(int(s.sum()), len(s))
        for c in hit_cols:
            v = g[c].dropna().astype(bool)
            row[c] = float(v.mean()) if len(v) else math.nan
        row["loglik"] = float(g["loglik"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def nll(model: Any, codes: torch.Tensor, prompts: Sequence[str | None] | None = None) -> torch.Tensor:
    """Per-clip mean negative log-likelihood of ``codes`` under the (unsteered) model: [B]."""
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
