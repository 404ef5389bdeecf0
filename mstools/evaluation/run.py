"""The instrument: run steering trials beside their controls, paired, and score every clip.

:func:`steering` generates, for each seed, every trial's clips together with

- ``unsteered``: the source prompts alone — the base rate, and each steered clip's **paired twin**
  (same prompt, same seed, same random numbers: paired sampling, :mod:`mstools.model.sampling`);
- ``random``: each trial's edits with ``random_draws`` random directions of the same per-hook norm
  (default 8 draws, each a separate arm), so "more than chance" is judged against a distribution;
  trials whose edits differ only in direction (e.g. toward four genres at one hook and strength)
  share the same draws, each judged against its own target;
- ``prompted``: the target asked for in the text instead (per source prompt), the quality reference,

in one batched generate per seed (chunked by ``max_batch``), scores every clip (and every time
segment) with the scorer, and returns one tidy table. :func:`mstools.evaluation.summarize` turns it
into one row per trial: success, base rate, moved (with an interval), random mean and spread, prompted,
log-likelihood drops and selectivity.

>>> from mstools.evaluation import summarize
>>> trials = [Trial("jazz", Steering(jazz, 0.5, schedule=(0, 2), branch="both"), {"genre": "jazz"})]
>>> table = steering(model, trials, prompts=[None] * 4, seeds=[0], duration=3)
>>> sorted(table["control"].unique())
['none', 'prompted', 'random', 'unsteered']
>>> summarize(table)[["trial", "n", "random_draws"]].values.tolist()
[['jazz', 4, 8]]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from mstools.evaluation.scoring import (Scorer, factor_columns, first_difference, score_segments,
                                        segment_windows)
from mstools.evaluation.trials import Trial, random_setting
from mstools.steering.apply import Setting, Steering, describe, sweep

__all__ = ["steering", "CONTROLS"]

CONTROLS = ("unsteered", "random", "prompted")


def _signature(steerings: Sequence[Steering]) -> tuple:
    """What a random control depends on: hooks, norms, shapes and how the edits are applied (not
    the directions). Trials with equal signatures share their random draws."""
    sig = []
    for s in steerings:
        d = s.describe()
        norms = tuple(sorted((h, round(n, 6)) for h, n in s.vector.norms().items()))
        shapes = tuple(sorted((h, tuple(v.shape)) for h, v in s.vector.directions.items()))
        weights = tuple(sorted((s.weights or {}).items()))
        sig.append((norms, shapes, s.vector.fingerprint, weights, *[str(d.get(k)) for k in (
            "strength", "schedule", "branch", "operator", "units", "hooks", "heads")]))
    return tuple(sig)


def _settings(trials: Sequence[Trial], controls: Sequence[str], draws: int
              ) -> tuple[list[Setting], list[dict[str, Any]]]:
    """Settings of one seed's generate: unsteered, each trial, and random draws (shared by trials
    whose edits differ only in direction). ``meta[i]["t"]`` lists the trials a setting serves."""
    settings: list[Setting] = [None]
    meta = [dict(control="unsteered", draw=-1, t=[None])]
    shared: dict[tuple, int] = {}
    for i, t in enumerate(trials):
        settings.append(t.steerings)
        meta.append(dict(control="none", draw=-1, t=[i]))
    if "random" in controls:
        for i, t in enumerate(trials):
            sig = _signature(t.steerings)
            if sig in shared:
                for d in range(draws):
                    meta[shared[sig] + d]["t"].append(i)
                continue
            shared[sig] = len(settings)
            for d in range(draws):
                settings.append(random_setting(t.steerings, seed=1000 + d))
                meta.append(dict(control="random", draw=d, t=[i]))
    return settings, meta


def _chunks(n_settings: int, n_prompts: int, max_batch: int | None) -> list[range]:
    per = n_settings if not max_batch else max(1, max_batch // max(1, n_prompts))
    return [range(a, min(n_settings, a + per)) for a in range(0, n_settings, per)]


def steering(model: Any, trials: Sequence[Trial], prompts: Sequence[str | None], *,
             seeds: Sequence[int] = (0,), duration: float = 6.0, scorer: Scorer | None = None,
             segments: float | Sequence[tuple[float, float]] | None = None, random_draws: int = 8,
             controls: Sequence[str] = CONTROLS, audio_prompt: torch.Tensor | None = None,
             audio_prompt_sample_rate: int | None = None, max_batch: int | None = 512,
             progress: bool = False, **generate_kw: Any) -> pd.DataFrame:
    """Run ``trials`` on ``prompts`` beside the controls; one row per clip and segment.

    Args:
        model: a :class:`~mstools.model.hooked.HookedMusicGen`.
        trials: what to test (:class:`Trial`).
        prompts: source prompts; every trial steers each of them (None = unconditional).
        seeds: generation seeds (clips of one seed and prompt index are paired across arms).
        duration: seconds per clip.
        scorer: codes -> labels + ``loglik`` (default: ``model.scorer``, e.g. the testbed grammar).
        segments: score time segments: a length in seconds, or windows ``[(t0, t1), ...]`` (e.g.
            before / inside / after a steering window).
        random_draws: random directions of equal norm per trial (>= 1 when ``"random"`` is in
            ``controls``).
        controls: any of ``"unsteered"`` (always run: it is the pairing reference), ``"random"``,
            ``"prompted"``.
        audio_prompt: ``[len(prompts), C, N]`` waveforms every arm continues (genre fusion).
        max_batch: most clips per generate (settings are chunked; paired sampling makes chunks
            equal to one batch).
        progress: a progress bar over generates.
        **generate_kw: ``cfg_coef``, ``top_k``, ``temperature`` ...

    Returns:
        DataFrame with ``trial, control (none | unsteered | random | prompted), draw, seed, clip
        (index of the source prompt: the pairing key), prompt, source_prompt, segment, start_s,
        end_s``, the scorer's columns (factor labels, ``loglik`` ...), ``target_<factor>``,
        ``hit_<factor>``, ``success``, ``first_diff_s`` (time of the first frame that differs from
        the paired unsteered clip; inf if none) and the setting's fields (``source, strength,
        schedule, branch, operator, units, hooks, heads``). ``table.attrs["factors"]`` lists the
        factors the scorer reads.
    """
    scorer = scorer or model.scorer
    if scorer is None:
        raise ValueError(f"no scorer for {model.model_name!r}: pass scorer=readout_scorer(...) (probe "
                         "readout on the re-encoded output) or any function codes [B, K, T] -> "
                         "DataFrame of factor labels and loglik")
    trials = list(trials)
    if not trials:
        raise ValueError("give at least one Trial")
    names = [t.name for t in trials]
    if len(set(names)) != len(names) or "unsteered" in names:
        raise ValueError(f"trial names must be distinct and not 'unsteered', got {names}")
    bad = set(controls) - set(CONTROLS)
    if bad:
        raise ValueError(f"unknown controls {sorted(bad)}; choose from {CONTROLS}")
    if "random" in controls and random_draws < 1:
        raise ValueError(f"random_draws must be >= 1 with the random control, got {random_draws}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("give at least one source prompt (None for an unconditional clip)")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    windows = segment_windows(duration, segments)
    settings, meta = _settings(trials, controls, random_draws)
    if audio_prompt is not None:
        audio_prompt = model.prepare_audio(audio_prompt, audio_prompt_sample_rate, len(prompts))
    gen_kw = dict(generate_kw, decode=False)
    if audio_prompt is not None:
        gen_kw["audio_prompt_sample_rate"] = model.sample_rate
    chunks = _chunks(len(settings), len(prompts), max_batch)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # lazy: only for the progress bar
        n_prompted = len(seeds) if "prompted" in controls else 0
        bar = tqdm(total=len(seeds) * len(chunks) + n_prompted, desc="evaluate", unit="generate")
    frames: list[pd.DataFrame] = []
    n = len(prompts)
    for seed in seeds:
        codes_parts = []
        for chunk in chunks:
            res = sweep(model, prompts, [settings[i] for i in chunk], duration, seed=seed,
                        audio_prompt=audio_prompt, **gen_kw)
            codes_parts.append(res.output.codes)
            if bar is not None:
                bar.update(1)
        codes = torch.cat(codes_parts)                      # [len(settings) * n, K, T]
        twin = codes[:n].repeat(len(settings), 1, 1)
        diff = first_difference(codes, twin, model.frame_rate).tolist()
        scores = score_segments(scorer, codes, windows, model.frame_rate)
        rows = []
        for si, m in enumerate(meta):
            desc = describe(settings[si])
            for ti in m["t"]:
                name = "unsteered" if ti is None else trials[ti].name
                for j in range(n):
                    rows.append(dict(row=si * n + j, trial=name, control=m["control"], draw=m["draw"],
                                     t=ti, seed=seed, clip=j, prompt=prompts[j],
                                     source_prompt=prompts[j], first_diff_s=diff[si * n + j], **desc))
        frames.append(pd.DataFrame(rows).merge(scores, on="row").drop(columns="row"))
        if "prompted" in controls:
            texts, ids, owner = [], [], []
            for i, t in enumerate(trials):
                texts += t.prompts_for(prompts)
                ids += list(range(n))
                owner += [i] * n
            out = model.generate(texts, duration, seed=seed, noise_ids=ids,
                                 audio_prompt=None if audio_prompt is None else audio_prompt.repeat(
                                     len(trials), *([1] * (audio_prompt.dim() - 1))), **gen_kw)
            diff = first_difference(out.codes, codes[:n].repeat(len(trials), 1, 1), model.frame_rate)
            sc = score_segments(scorer, out.codes, windows, model.frame_rate)
            rows = [dict(row=r, trial=trials[owner[r]].name, control="prompted", draw=-1, t=owner[r],
                         seed=seed, clip=ids[r], prompt=texts[r], source_prompt=prompts[ids[r]],
                         first_diff_s=float(diff[r]), source="prompt", strength=0.0)
                    for r in range(len(texts))]
            frames.append(pd.DataFrame(rows).merge(sc, on="row").drop(columns="row"))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    df = pd.concat(frames, ignore_index=True)
    for col in ("prompt", "source_prompt"):  # None (unconditional) stays None, not NaN
        df[col] = pd.Series([None if v is None or (isinstance(v, float) and v != v) else v
                             for v in df[col].tolist()], dtype=object, index=df.index)
    factors = factor_columns(df.drop(columns=[c for c in df.columns if c in (
        "trial", "control", "source_prompt", "source", "schedule", "branch", "operator", "units",
        "hooks", "heads")]))
    _targets(df, trials, factors)
    df = df.drop(columns="t")
    df.attrs["factors"] = factors
    df.attrs["windows"] = windows
    return df


def _targets(df: pd.DataFrame, trials: Sequence[Trial], factors: Sequence[str]) -> None:
    """Fill ``target_<f>``, ``hit_<f>`` and ``success`` (in place); unsteered rows have no target."""
    for f in set(f for t in trials for f in list(t.target) + [g for s in (t.segment_targets or {}).values()
                                                              for g in s]) - set(factors):
        raise ValueError(f"a trial targets {f!r}, which the scorer does not read (it reads {list(factors)})")
    for f in factors:
        df[f"target_{f}"] = None
    for i, t in enumerate(trials):
        mine = df["t"] == i
        for seg in df.loc[mine, "segment"].unique():
            want = t.target_for(int(seg))
            sel = mine & (df["segment"] == seg)
            for f, v in want.items():
                df.loc[sel, f"target_{f}"] = v
    hits = []
    for f in factors:
        tgt = df[f"target_{f}"]
        df[f"hit_{f}"] = (df[f] == tgt).where(tgt.notna())
        hits.append(f"hit_{f}")
    has = df[[f"target_{f}" for f in factors]].notna().any(axis=1)
    all_hit = np.ones(len(df), dtype=bool)
    for f in factors:
        h = df[f"hit_{f}"]
        all_hit &= (h.isna() | h.astype(bool)).to_numpy()
    df["success"] = pd.Series(all_hit, index=df.index).where(has)
