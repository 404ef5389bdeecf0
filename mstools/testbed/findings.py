"""Steering findings on the testbed: which directions, hooks, branches and schedules move genre.

    python -m mstools.testbed.findings [--quick] [--seeds N] [--out DIR] [--no-write]

Runs six experiments on the trained testbed (every setting of an experiment in one batched
generate per seed), scores every clip with the procedural grammar (:func:`mstools.testbed.score`)
and writes ``findings.json`` (tidy rows, one per clip and segment) and ``findings.md`` (tables):

1. ``methods``: difference of means vs regression probe (ridge onto one-hot) vs classifier probe
   (logistic) genre directions, on ``hook_resid_post`` of every layer; the best layer is taken
   from this table and used by the experiments after it.
2. ``hooks``: residual vs self-attention out vs MLP out vs cross-attention out vs all heads
   (``attn.hook_z``) vs a subset of heads, at the best layer; plus a cross-attention "prompt
   substitution" vector (mean cross-attention output under the target prompt minus under the
   source prompt, every layer, raw units).
3. ``branch``: ``cond`` vs ``both`` CFG branches, constant schedule vs a 0-2 s pulse, from three
   kinds of source prompts.
4. ``window``: steering only from ``t0`` = 3 s; codes before the window must be bit-identical to
   the unsteered generation with the same seed (checked frame by frame), segments of 3 s scored.
5. ``fusion``: an audio prompt of genre A (a procedural clip rendered by ``SynthCodec``)
   continued while steering toward genre B from 3 s; and a crossfade from vector A to vector B.
6. ``timbre``: instrument direction (to brass) with the genre held, per-factor breakdown.

Sources (the prompts being steered), reported separately, failures included:

- ``uncond``: no text;
- ``other``: prompts that name tempo / dynamics / instrument but no genre;
- ``genre``: a prompt naming the source genre that differs from the target in both the shared
  factors and the order cue (rock <-> jazz, classical <-> electronic).

Controls: ``unsteered`` (same prompts and seeds), ``random`` (each setting with a random direction
of the same norm, in the same batch), ``prompted`` (the target asked for in the text).
Success = every target factor read by the grammar equals the target; ``moved`` = success minus the
unsteered success of the same source (unconditional clips are jazz ~30 % of the time unsteered);
``ll_drop`` = unsteered loglik minus the setting's loglik; the aim (issue) is success >= 0.8 with
``ll_drop <= 2 * ll_drop(prompted)`` and random moved <= 0.05.

Directions are computed directly with torch / scikit-learn on mean-pooled teacher-forced
activations of procedural clips with their prompts (:func:`pooled_features`).

>>> model = mstools.load_musicgen("testbed")
>>> vecs = genre_directions(model, "jazz", "blocks.1.hook_resid_post")   # {method: SteeringVector}
>>> df = run_all(model, quick=True)
>>> print(to_markdown(df))
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..evaluate import random_like, wilson
from ..steering import Steering, SteeringVector, crossfade, steering_hooks, window
from ..fileio import atomic_write_bytes
from .music import DYNAMICS, FACTORS, GENRES, INSTRUMENTS, TEMPOS, make_dataset
from .score import score

__all__ = [
    "METHODS", "OPPOSITE", "Arm", "pooled_features", "factor_directions", "genre_directions",
    "prompt_substitution", "source_prompts", "run_arms", "run_all", "summarize", "to_markdown",
    "write_findings", "main",
]

HERE = Path(__file__).resolve().parent
METHODS = ("diff_means", "ridge", "logistic")
#: Source genre for each target: differs in scale, drum kit and order cue.
OPPOSITE = {"jazz": "rock", "rock": "jazz", "classical": "electronic", "electronic": "classical"}
DURATION = 6.0
PULSE = (0.0, 2.0)  # the "pulse" schedule: steer the first 2 s, then let the context carry genre
LABEL_COLUMNS = list(FACTORS)


# ---------------------------------------------------------------------------------------- features
_FEATURES: dict[tuple, tuple[dict[str, torch.Tensor], pd.DataFrame]] = {}


def pooled_features(model: Any, hooks: Sequence[str], n_clips: int = 1024, seed: int = 101,
                    frames: int = 60, prompted: bool = True) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Mean-over-steps activations of teacher-forced procedural clips (with their prompts, or with
    the null text when ``prompted=False``: then only the audio can tell the factors apart).

    Returns:
        ``({hook: float32 [N, D]}, labels)`` where ``attn.hook_z`` is flattened to ``[N, H * Dh]``
        and ``labels`` has one column per factor plus ``clip`` and ``prompt`` (the clip's prompt,
        whether or not it was used). Cached per model and arguments.

    Example:
        >>> X, labels = pooled_features(model, ["blocks.1.hook_resid_post"], n_clips=64)
        >>> X["blocks.1.hook_resid_post"].shape
        torch.Size([64, 96])
    """
    hooks = model.check_names(list(hooks))
    key = (model.fingerprint, tuple(hooks), n_clips, seed, frames, prompted)
    if key not in _FEATURES:
        clips = make_dataset(n_clips, frames, seed=seed)
        codes = torch.stack([c.codes for c in clips])
        prompts = [c.prompt if prompted else None for c in clips]
        feats: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        for start in range(0, n_clips, 256):
            _, cache = model.run_with_cache(codes[start:start + 256], prompts[start:start + 256],
                                            names_filter=hooks)
            for h in hooks:
                feats[h].append(cache[h].float().flatten(2).mean(1).cpu())
        labels = pd.DataFrame([{**c.labels, "clip": i, "prompt": c.prompt} for i, c in enumerate(clips)])
        _FEATURES[key] = ({h: torch.cat(v) for h, v in feats.items()}, labels)
    return _FEATURES[key]


_FITS: dict[tuple, tuple[list[str], torch.Tensor, float]] = {}


def _directions_all(X: torch.Tensor, y: np.ndarray, method: str,
                    train: np.ndarray) -> tuple[list[str], torch.Tensor, float]:
    """Raw-space directions ``[C, D]`` for every class and the held-out accuracy of the read-out."""
    test = ~train
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    classes = sorted(set(y))
    if method == "diff_means":
        Xt, yt = X[tr], y[train]
        means = torch.stack([Xt[torch.from_numpy(yt == c)].mean(0) for c in classes])
        rest = torch.stack([Xt[torch.from_numpy(yt != c)].mean(0) for c in classes])
        # nearest-class-mean accuracy on held-out clips (a read-out of the same means)
        pred = np.asarray(classes)[torch.cdist(X[te], means).argmin(1).numpy()]
        return classes, means - rest, float((pred == y[test]).mean())
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    Z = ((X - mu) / sd).double()
    if method == "ridge":
        Zt = Z[tr]
        Y = torch.tensor(np.stack([y[train] == c for c in classes], 1), dtype=torch.float64)
        lam = 1.0 * Zt.shape[0]
        W = torch.linalg.solve(Zt.T @ Zt + lam * torch.eye(Zt.shape[1], dtype=Zt.dtype),
                               Zt.T @ (Y - Y.mean(0))).T                     # [C, D]
        pred = np.asarray(classes)[(Z[te] @ W.T).argmax(1).numpy()]
    elif method == "logistic":
        from sklearn.linear_model import LogisticRegression
        clf = LogisticRegression(max_iter=3000, C=1.0).fit(Z[tr].numpy(), y[train])
        pred = clf.predict(Z[te].numpy())
        coef = torch.from_numpy(clf.coef_)
        if coef.shape[0] == 1:  # binary: sklearn keeps one row for classes_[1]
            coef = torch.cat([-coef, coef])
        W = (coef - coef.mean(0))[[list(clf.classes_).index(c) for c in classes]]
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return classes, (W / sd.double()).float(), float((pred == y[test]).mean())


def factor_directions(model: Any, factor: str, target: str, hook: str, *,
                      methods: Sequence[str] = METHODS, n_clips: int = 1024,
                      seed: int = 101) -> dict[str, SteeringVector]:
    """One steering vector per method pointing to ``factor=target`` at ``hook``.

    Methods: ``diff_means`` (mean of target clips minus mean of the rest), ``ridge`` (regression
    onto one-hot labels on standardised features, the target's column mapped back to raw space),
    ``logistic`` (multinomial classifier, target row minus the mean row, mapped back to raw space).
    Fitted on 75 % of the clips; ``meta["probe_accuracy"]`` is the held-out accuracy of each
    method's read-out. Directions have unit norm (``units="unit"``); ``attn.hook_z`` ones are
    ``[H, Dh]``.

    Example:
        >>> vecs = factor_directions(model, "instrument", "brass", "blocks.2.hook_resid_post")
        >>> sorted(vecs), vecs["logistic"].meta["probe_accuracy"] > 0.9
        (['diff_means', 'logistic', 'ridge'], True)
    """
    if factor not in FACTORS or target not in FACTORS[factor]:
        raise ValueError(f"unknown {factor}={target!r}; factors are {FACTORS}")
    X, labels = pooled_features(model, [hook], n_clips=n_clips, seed=seed)
    x = X[hook]
    y = labels[factor].to_numpy()
    train = np.arange(len(y)) < int(0.75 * len(y))
    shape = model.hook_shape(hook)
    out = {}
    for method in methods:
        key = (model.fingerprint, hook, n_clips, seed, factor, method)
        if key not in _FITS:
            _FITS[key] = _directions_all(x, y, method, train)
        classes, W, acc = _FITS[key]
        d = W[classes.index(target)]
        d = (d / d.norm()).reshape(shape)
        out[method] = SteeringVector({hook: d}, model.fingerprint, source=f"{method}:{factor}={target}",
                                     units="unit", meta={"method": method, "factor": factor,
                                                         "target": target, "hook": hook,
                                                         "probe_accuracy": acc})
    return out


def genre_directions(model: Any, target: str, hook: str, **kw: Any) -> dict[str, SteeringVector]:
    """:func:`factor_directions` for ``factor="genre"``: ``{method: SteeringVector}``."""
    return factor_directions(model, "genre", target, hook, **kw)


def prompt_substitution(model: Any, target_prompt: str, source_prompt: str | None, *,
                        n_clips: int = 256, seed: int = 101) -> SteeringVector:
    """Cross-attention outputs of every layer under ``target_prompt`` minus under ``source_prompt``.

    Mean over clips and steps of ``blocks.{l}.hook_cross_attn_out`` (raw units: strength 1 adds the
    average difference the text itself makes). ``source_prompt=None`` is the null condition.
    """
    hooks = [f"blocks.{l}.hook_cross_attn_out" for l in range(model.num_layers)]
    codes = torch.stack([c.codes for c in make_dataset(n_clips, 60, seed=seed)])
    _, a = model.run_with_cache(codes, [target_prompt] * n_clips, names_filter=hooks)
    _, b = model.run_with_cache(codes, [source_prompt] * n_clips, names_filter=hooks)
    dirs = {h: (a[h].float() - b[h].float()).mean((0, 1)).cpu() for h in hooks}
    return SteeringVector(dirs, model.fingerprint, source=f"prompt_sub:{target_prompt}-{source_prompt}",
                          units="raw", meta={"method": "prompt_sub"})


# ---------------------------------------------------------------------------------------- prompts
def _other_prompts(n: int, seed: int = 5) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = []
        if rng.random() < 0.7:
            words.append(str(rng.choice(DYNAMICS)))
        if rng.random() < 0.7:
            words.append(str(rng.choice(TEMPOS)))
        words.append("music")
        if rng.random() < 0.7:
            words += ["with", str(rng.choice(INSTRUMENTS))]
        out.append(" ".join(words))
    return out


def source_prompts(source: str, target: str, n: int) -> list[str | None]:
    """Prompts steered toward genre ``target``: ``uncond`` (None), ``other`` (no genre word) or
    ``genre`` (the opposite genre, :data:`OPPOSITE`)."""
    if source == "uncond":
        return [None] * n
    if source == "other":
        return _other_prompts(n)
    if source == "genre":
        return [OPPOSITE[target]] * n
    raise ValueError(f"unknown source {source!r}; choose uncond, other or genre")


def _prompted(prompt: str | None, target: str) -> str:
    """The source prompt asking for the target genre instead ("fast music" -> "fast jazz")."""
    if prompt is None or prompt in GENRES:
        return target
    return prompt.replace("music", target)


# ---------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Arm:
    """One condition of an experiment: steering settings (stacked; none = unsteered) on prompts.

    ``group``: arms of one group share one batched generate per seed. ``segment_targets``:
    per-segment targets (crossfade); ``info``: columns copied into every row.
    """

    experiment: str
    name: str
    prompts: list
    target: dict
    settings: list = dataclasses.field(default_factory=list)
    control: str = "none"
    group: str = "main"
    segment_seconds: float | None = None
    segment_targets: dict | None = None
    audio_prompt: torch.Tensor | None = None
    info: dict = dataclasses.field(default_factory=dict)


def _score_arm(arm: Arm, codes: torch.Tensor, seed: int) -> pd.DataFrame:
    df = score(codes, segment_seconds=arm.segment_seconds)
    df["prompt"] = [arm.prompts[c] for c in df["clip"]]
    df["experiment"], df["arm"], df["control"], df["seed"] = arm.experiment, arm.name, arm.control, seed
    for k, v in arm.info.items():
        df[k] = v if not isinstance(v, (list, tuple)) else str(v)
    for f in FACTORS:
        if arm.segment_targets is not None:
            df[f"target_{f}"] = [arm.segment_targets.get(s, {}).get(f) for s in df["segment"]]
        else:
            df[f"target_{f}"] = arm.target.get(f)
    return df


def run_arms(model: Any, arms: Sequence[Arm], seeds: Sequence[int], duration: float = DURATION,
             progress: bool = False) -> pd.DataFrame:
    """Generate and score every arm; arms with the same ``group`` share one generate per seed.

    Returns a tidy DataFrame, one row per clip (and segment): ``experiment, arm, control, seed,
    clip, segment, start_s, end_s, genre, tempo, instrument, dynamics, loglik, error_rate, prompt,
    target_<factor>, hit_<factor>, success`` plus each arm's ``info`` columns.
    """
    groups: dict[str, list[Arm]] = {}
    for arm in arms:
        groups.setdefault(arm.group, []).append(arm)
    frames = []
    for name, members in groups.items():
        for seed in seeds:
            t0 = time.monotonic()
            prompts, pairs, spans = [], [], []
            for arm in members:
                rows = list(range(len(prompts), len(prompts) + len(arm.prompts)))
                prompts += arm.prompts
                pairs += [(s, rows) for s in arm.settings]
                spans.append((rows[0], rows[-1] + 1))
            kw: dict[str, Any] = {}
            if any(a.audio_prompt is not None for a in members):
                kw = dict(audio_prompt=torch.cat([a.audio_prompt for a in members]),
                          audio_prompt_sample_rate=model.sample_rate)
            hooks = steering_hooks(model, pairs) if pairs else []
            out = model.generate(prompts, duration, seed=seed, decode=False, fwd_hooks=hooks, **kw)
            for arm, (a, b) in zip(members, spans):
                frames.append(_score_arm(arm, out.codes[a:b].cpu(), seed))
            if progress:
                print(f"  {name} seed {seed}: {len(prompts)} clips in {time.monotonic() - t0:.1f} s",
                      flush=True)
    return _finish(pd.concat(frames, ignore_index=True))


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``hit_<factor>`` (label == target, NaN without a target) and ``success`` (all hit)."""
    for f in FACTORS:
        tgt = df[f"target_{f}"]
        df[f"hit_{f}"] = (df[f] == tgt).where(tgt.notna())
    hits = df[[f"hit_{f}" for f in FACTORS]]
    wanted = hits.notna()
    df["success"] = (hits.fillna(True).astype(bool).all(axis=1)).where(wanted.any(axis=1))
    return df


# ---------------------------------------------------------------------------------------- experiments
@dataclasses.dataclass
class _Config:
    targets: tuple[str, ...]
    n_prompts: int
    n_clips: int
    layers: tuple[int, ...]
    alphas: tuple[float, ...]


def _config(quick: bool) -> _Config:
    if quick:
        return _Config(targets=("jazz",), n_prompts=8, n_clips=256, layers=(1, 2), alphas=(0.5,))
    return _Config(targets=GENRES, n_prompts=16, n_clips=1024, layers=(0, 1, 2, 3, 4, 5, 6, 7),
                   alphas=(0.5, 0.75))


def _info(method: str, hook: str, alpha: float, branch: str, schedule: Any, source: str,
          **extra: Any) -> dict:
    part = hook.split(".")[1] if hook.startswith("blocks.") else ""
    layer = int(part) if part.isdigit() else -1
    return dict(method=method, hook=hook, layer=layer, alpha=float(alpha), branch=branch,
                schedule="constant" if schedule is None else (schedule if isinstance(schedule, str) else repr(schedule)),
                source=source, **extra)


def _with_controls(arms: list[Arm], experiment: str, group: str, sources: Sequence[str],
                   targets: Sequence[str], n: int, random_key: Any = None) -> list[Arm]:
    """Add a random twin per distinct (hook, alpha, branch, schedule, source, target) setting and
    unsteered / prompted arms per source and target, all in ``group``."""
    out = list(arms)
    seen = set()
    for i, arm in enumerate(arms):
        if not arm.settings:
            continue
        key = (arm.info.get("hook"), arm.info.get("alpha"), arm.info.get("branch"),
               arm.info.get("schedule"), arm.info.get("heads"), arm.info.get("source"),
               tuple(sorted(arm.target.items())), arm.info.get("units"))
        if key in seen:
            continue
        seen.add(key)
        settings = [dataclasses.replace(s, vector=random_like(s.vector, 1000 + len(seen)))
                    for s in arm.settings]
        heads = arm.info.get("heads")
        out.append(dataclasses.replace(arm, name=f"random|{arm.info.get('hook')}{'' if heads is None else f'[{heads}]'}"
                                                 f"|{arm.info.get('branch')}|{arm.info.get('schedule')}|a={arm.info.get('alpha')}",
                                       settings=settings, control="random",
                                       info={**arm.info, "method": "random"}))
    for source in sources:
        for t in targets:
            prompts = source_prompts(source, t, n)
            out.append(Arm(experiment, "unsteered", prompts, {"genre": t}, group=group, control="unsteered",
                           info=dict(source=source, method="none")))
            out.append(Arm(experiment, "prompted", [_prompted(p, t) for p in prompts], {"genre": t},
                           group=group, control="prompted", info=dict(source=source, method="prompt")))
    return out


def exp_methods(model: Any, cfg: _Config) -> list[Arm]:
    """Experiment 1: three direction methods x layers x strengths, unconditional, 0-2 s pulse."""
    arms = []
    for layer in cfg.layers:
        hook = f"blocks.{layer}.hook_resid_post"
        for t in cfg.targets:
            vecs = genre_directions(model, t, hook, n_clips=cfg.n_clips)
            for method, vec in vecs.items():
                for a in cfg.alphas:
                    arms.append(Arm("methods", f"{method}|L{layer}|a={a}", source_prompts("uncond", t, cfg.n_prompts),
                                    {"genre": t}, [Steering(vec, a, window(*PULSE), branch="both")],
                                    group="methods",
                                    info=_info(method, hook, a, "both", window(*PULSE), "uncond",
                                               probe_accuracy=vec.meta["probe_accuracy"])))
    return _with_controls(arms, "methods", "methods", ["uncond"], cfg.targets, cfg.n_prompts)


def _best(df: pd.DataFrame, experiment: str) -> dict:
    """Best steered arm of an experiment: highest success among arms whose loglik drop is within
    twice the prompted one (else highest success)."""
    s = summarize(df[df.experiment == experiment])
    steered = s[s.control == "none"].copy()
    ok = steered[steered.aim_quality.fillna(False).astype(bool)]
    pick = (ok if len(ok) else steered).sort_values(["success", "loglik"], ascending=False).iloc[0]
    return pick.to_dict()


def _heads_subset(model: Any, target: str, layer: int, n_clips: int, k: int = 2) -> list[int]:
    """The ``k`` heads whose slice of the logistic direction at ``attn.hook_z`` is largest."""
    v = genre_directions(model, target, f"blocks.{layer}.attn.hook_z", methods=("logistic",),
                         n_clips=n_clips)["logistic"]
    d = v[f"blocks.{layer}.attn.hook_z"]
    return sorted(torch.linalg.vector_norm(d, dim=1).argsort(descending=True)[:k].tolist())


def exp_hooks(model: Any, cfg: _Config, method: str, layer: int) -> list[Arm]:
    """Experiment 2: where to steer at the best layer; plus cross-attention prompt substitution."""
    arms = []
    alphas = (0.5, 1.0)
    kinds = ["hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_cross_attn_out", "attn.hook_z"]
    for t in cfg.targets:
        prompts = source_prompts("uncond", t, cfg.n_prompts)
        heads = _heads_subset(model, t, layer, cfg.n_clips)
        for kind in kinds:
            hook = f"blocks.{layer}.{kind}"
            vec = genre_directions(model, t, hook, methods=(method,), n_clips=cfg.n_clips)[method]
            variants = [(kind, None)] + ([("attn.hook_z[heads]", heads)] if kind == "attn.hook_z" else [])
            for label, hs in variants:
                for a in alphas:
                    arms.append(Arm("hooks", f"{label}|a={a}", prompts, {"genre": t},
                                    [Steering(vec, a, window(*PULSE), branch="both", heads=hs)], group="hooks",
                                    info=_info(method, hook, a, "both", window(*PULSE), "uncond", kind=label,
                                               heads=None if hs is None else ",".join(map(str, hs)))))
    for source in ("uncond", "genre"):
        for t in cfg.targets:
            prompts = source_prompts(source, t, cfg.n_prompts)
            vec = prompt_substitution(model, t, prompts[0], n_clips=min(cfg.n_clips, 256))
            for a in (2.0,):
                arms.append(Arm("hooks", f"cross_attn prompt-sub all layers|a={a}", prompts, {"genre": t},
                                [Steering(vec, a, None, branch="both", units="raw")], group="hooks",
                                info=_info("prompt_sub", "blocks.*.hook_cross_attn_out", a, "both", None,
                                           source, kind="cross_attn prompt-sub", units="raw")))
    return _with_controls(arms, "hooks", "hooks", ["uncond", "genre"], cfg.targets, cfg.n_prompts)


def exp_branch(model: Any, cfg: _Config, method: str, layer: int) -> list[Arm]:
    """Experiment 3: cond vs both, constant vs pulse, three kinds of sources."""
    arms = []
    hook = f"blocks.{layer}.hook_resid_post"
    alphas = {"both": (0.5,) if len(cfg.alphas) == 1 else (0.35, 0.5),
              "cond": (0.15,) if len(cfg.alphas) == 1 else (0.1, 0.2)}
    for t in cfg.targets:
        vec = genre_directions(model, t, hook, methods=(method,), n_clips=cfg.n_clips)[method]
        for source in ("uncond", "other", "genre"):
            prompts = source_prompts(source, t, cfg.n_prompts)
            for branch, alist in alphas.items():
                for sched in (None, window(*PULSE)):
                    for a in alist:
                        arms.append(Arm("branch", f"{branch}|{'constant' if sched is None else 'pulse 0-2s'}|a={a}",
                                        prompts, {"genre": t}, [Steering(vec, a, sched, branch=branch)],
                                        group="branch", info=_info(method, hook, a, branch, sched, source)))
    return _with_controls(arms, "branch", "branch", ["uncond", "other", "genre"], cfg.targets, cfg.n_prompts)


def exp_window(model: Any, cfg: _Config, method: str, layer: int, seeds: Sequence[int],
               t0: float = 3.0) -> pd.DataFrame:
    """Experiment 4: steer from ``t0`` only; check bit-identity before the window, score 3 s halves.

    Per source and seed, two generates with identical prompts and seed: unsteered, and every
    steered arm in its own rows. Steering at input step ``s`` can change codebook ``k`` of frame
    ``s - k`` at the earliest (delay pattern), so frames ``< t0 * frame_rate - (K - 1)`` must be
    bit-identical; frames up to ``t0`` may differ in their upper codebooks only. Adds the columns
    ``identical_before`` (every frame before that bound equal) and ``first_diff_s`` (time of the
    first differing frame, NaN if none).
    """
    hook = f"blocks.{layer}.hook_resid_post"
    alphas = (0.75,) if len(cfg.alphas) == 1 else (0.5, 0.75, 1.0)
    bound = int(round(t0 * model.frame_rate)) - (model.num_codebooks - 1)
    frames = []
    for source in ("uncond", "other"):
        arms = []
        for t in cfg.targets:
            vec = genre_directions(model, t, hook, methods=(method,), n_clips=cfg.n_clips)[method]
            for a in alphas:
                info = _info(method, hook, a, "both", window(t0, None), source)
                s = Steering(vec, a, window(t0, None), branch="both")
                arms.append(Arm("window", f"from {t0:g}s|a={a}", source_prompts(source, t, cfg.n_prompts),
                                {"genre": t}, [s], segment_seconds=t0, info=info))
                arms.append(Arm("window", f"random|from {t0:g}s|a={a}", source_prompts(source, t, cfg.n_prompts),
                                {"genre": t}, [dataclasses.replace(s, vector=random_like(vec, 55))],
                                control="random", segment_seconds=t0, info={**info, "method": "random"}))
        prompts, pairs, spans = [], [], []
        for arm in arms:
            rows = list(range(len(prompts), len(prompts) + len(arm.prompts)))
            prompts += arm.prompts
            pairs += [(s, rows) for s in arm.settings]
            spans.append((rows[0], rows[-1] + 1))
        for seed in seeds:
            steered = model.generate(prompts, DURATION, seed=seed, decode=False,
                                     fwd_hooks=steering_hooks(model, pairs)).codes.cpu()
            plain = model.generate(prompts, DURATION, seed=seed, decode=False).codes.cpu()
            asked = model.generate([_prompted(p, arm.target["genre"]) for arm in arms for p in arm.prompts],
                                   DURATION, seed=seed, decode=False).codes.cpu()
            diff = (steered != plain).any(1)                                    # [B, T]
            ident = (~diff[:, :bound]).all(1).numpy()
            first = np.where(diff.any(1).numpy(), diff.float().argmax(1).numpy() / model.frame_rate, np.nan)
            for arm, (a, b) in zip(arms, spans):
                for codes, ctl in ((steered, arm.control), (plain, "unsteered"), (asked, "prompted")):
                    if ctl in ("unsteered", "prompted") and (arm.info["alpha"] != alphas[0] or arm.control != "none"):
                        continue  # one unsteered / prompted copy per (source, target)
                    use = arm if ctl == arm.control else dataclasses.replace(
                        arm, name=ctl, control=ctl, info=dict(source=source, method="none"))
                    df = _score_arm(use, codes[a:b], seed)
                    df["identical_before"] = ident[a:b][df["clip"].to_numpy()]
                    df["first_diff_s"] = first[a:b][df["clip"].to_numpy()]
                    frames.append(df)
    return _finish(pd.concat(frames, ignore_index=True))


def _procedural_audio(model: Any, genre: str, n: int, seconds: float, seed: int) -> torch.Tensor:
    clips = make_dataset(n, int(round(seconds * model.frame_rate)), seed=seed, genre=genre)
    codes = torch.stack([c.codes for c in clips])
    return model.decode_codes(codes).cpu()


def exp_fusion(model: Any, cfg: _Config, method: str, layer: int) -> list[Arm]:
    """Experiment 5: continue an audio prompt of genre A while steering to B from 3 s; crossfade A->B."""
    hook = f"blocks.{layer}.hook_resid_post"
    alphas = (0.75,) if len(cfg.alphas) == 1 else (0.5, 0.75, 1.0)
    arms = []
    n = cfg.n_prompts
    for t in cfg.targets:
        src = OPPOSITE[t]
        audio = _procedural_audio(model, src, n, 3.0, seed=400 + GENRES.index(t))
        vec = genre_directions(model, t, hook, methods=(method,), n_clips=cfg.n_clips)[method]
        seg_t = {0: {"genre": src}, 1: {"genre": t}}
        common = dict(segment_seconds=3.0, segment_targets=seg_t, audio_prompt=audio, group="fusion")
        arms.append(Arm("fusion", "continuation unsteered", [None] * n, {"genre": t}, control="unsteered",
                        info=dict(source="audio(opposite)", method="none"), **common))
        arms.append(Arm("fusion", "continuation prompted", [t] * n, {"genre": t}, control="prompted",
                        info=dict(source="audio(opposite)", method="prompt"), **common))
        for a in alphas:
            s = [Steering(vec, a, window(3.0, None), branch="both")]
            arms.append(Arm("fusion", f"continuation steered from 3s|a={a}", [None] * n, {"genre": t}, s,
                            info=_info(method, hook, a, "both", window(3.0, None), "audio(opposite)"), **common))
            rnd = [dataclasses.replace(s[0], vector=random_like(vec, 77))]
            arms.append(Arm("fusion", f"random|a={a}", [None] * n, {"genre": t}, rnd, control="random",
                            info=_info("random", hook, a, "both", window(3.0, None), "audio(opposite)"), **common))
        # crossfade from vector(src) to vector(t), unconditional
        vsrc = genre_directions(model, src, hook, methods=(method,), n_clips=cfg.n_clips)[method]
        w_a, w_b = crossfade(2.0, 4.0)
        for a in alphas[:1] if len(alphas) == 1 else (0.5, 0.75):
            arms.append(Arm("fusion", f"crossfade 2-4s|a={a}", [None] * n, {"genre": t},
                            [Steering(vsrc, a, w_a, branch="both"), Steering(vec, a, w_b, branch="both")],
                            segment_seconds=2.0, segment_targets={0: {"genre": src}, 2: {"genre": t}},
                            group="crossfade",
                            info=_info(method, hook, a, "both", "crossfade(2.0, 4.0)", "uncond")))
            arms.append(Arm("fusion", "crossfade unsteered", [None] * n, {"genre": t}, control="unsteered",
                            segment_seconds=2.0, segment_targets={0: {"genre": src}, 2: {"genre": t}},
                            group="crossfade", info=dict(source="uncond", method="none")))
    return arms


def exp_timbre(model: Any, cfg: _Config, method: str, layers: Sequence[int],
               target: str = "brass", source_instrument: str = "piano") -> list[Arm]:
    """Experiment 6: instrument direction (to ``target``) with the genre held, three sources."""
    arms = []
    n = cfg.n_prompts
    genres = [GENRES[i % len(GENRES)] for i in range(n)]
    sources = {"uncond": ([None] * n, None),
               "genre": (list(genres), genres),                                   # "jazz"
               "genre+instrument": ([f"{g} with {source_instrument}" for g in genres], genres)}
    alphas = (0.5,) if len(cfg.alphas) == 1 else (0.25, 0.5, 1.0)
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_post"
        vec = factor_directions(model, "instrument", target, hook, methods=(method,), n_clips=cfg.n_clips)[method]
        for source, (prompts, held) in sources.items():
            # one arm per held genre so the target can hold it; uncond holds nothing
            parts = [(prompts, None)] if held is None else \
                [([p for p, g in zip(prompts, held) if g == gg], gg) for gg in dict.fromkeys(held)]
            for ps, gg in parts:
                tgt = {"instrument": target, **({"genre": gg} if gg else {})}
                for a in alphas:
                    s = [Steering(vec, a, None, branch="both")]
                    info = _info(method, hook, a, "both", None, source)
                    arms.append(Arm("timbre", f"{target}|L{layer}|a={a}", ps, tgt, s, group="timbre", info=info))
                    arms.append(Arm("timbre", f"random|L{layer}|a={a}", ps, tgt,
                                    [dataclasses.replace(s[0], vector=random_like(vec, 99 + layer))],
                                    control="random", group="timbre", info={**info, "method": "random"}))
                if layer == layers[0]:
                    arms.append(Arm("timbre", "unsteered", ps, tgt, control="unsteered", group="timbre",
                                    info=dict(source=source, method="none")))
                    pr = [target if p is None else (f"{gg} with {target}") for p in ps]
                    arms.append(Arm("timbre", "prompted", pr, tgt, control="prompted", group="timbre",
                                    info=dict(source=source, method="prompt")))
    return arms


def run_all(model: Any, quick: bool = False, seeds: Sequence[int] | None = None,
            progress: bool = False) -> pd.DataFrame:
    """Run the six experiments; returns the tidy table (see :func:`run_arms`).

    ``quick``: one target (jazz), 8 prompts, one strength per arm (about half a minute).
    Full: four targets x 16 prompts (64 clips per table row and seed), layers 0-7.
    The best (method, layer) of experiment 1 is used by experiments 2-6.
    """
    torch.manual_seed(0)
    cfg = _config(quick)
    seeds = list(seeds) if seeds is not None else [0]
    t0 = time.monotonic()
    log = (lambda msg: print(f"[{time.monotonic() - t0:6.1f} s] {msg}", flush=True)) if progress else (lambda m: None)
    df1 = run_arms(model, exp_methods(model, cfg), seeds, progress=progress)
    best = _best(df1, "methods")
    method, layer = best["method"], int(best["layer"])
    log(f"methods done; best {method} at layer {layer} (success {best['success']:.2f})")
    parts = [df1]
    parts.append(run_arms(model, exp_hooks(model, cfg, method, layer), seeds, progress=progress))
    log("hooks done")
    parts.append(run_arms(model, exp_branch(model, cfg, method, layer), seeds, progress=progress))
    log("branch done")
    parts.append(exp_window(model, cfg, method, layer, seeds))
    log("window done")
    parts.append(run_arms(model, exp_fusion(model, cfg, method, layer), seeds, progress=progress))
    log("fusion done")
    timbre_layers = (layer,) if quick else tuple(sorted({layer, 2}))
    parts.append(run_arms(model, exp_timbre(model, cfg, method, timbre_layers), seeds, progress=progress))
    log("timbre done")
    df = pd.concat(parts, ignore_index=True)
    df.attrs["best"] = {"method": method, "layer": layer}
    return df


# ---------------------------------------------------------------------------------------- summary
_KEYS = ["experiment", "arm", "control", "source", "segment"]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, arm, control, source, segment): n, success with a 95 % Wilson
    interval, per-factor hit rates, none rate, loglik; steered rows also get the matching
    unsteered / random / prompted numbers, ``moved``, ``ll_drop`` and the aim checks.
    Arms for several targets are pooled (their targets differ; success is per clip)."""
    d = df.copy()
    if "segment" not in d:
        d["segment"] = 0
    for c in ("source", "hook", "method", "layer", "alpha", "branch", "schedule", "heads"):
        if c not in d:
            d[c] = None
    rows = []
    for key, g in d.groupby(_KEYS, sort=False, dropna=False):
        s = g["success"].dropna().astype(bool)
        if not len(s):
            continue
        row = dict(zip(_KEYS, key))
        row.update(method=g["method"].iloc[0], hook=g["hook"].iloc[0], layer=g["layer"].iloc[0],
                   alpha=g["alpha"].iloc[0], branch=g["branch"].iloc[0], schedule=g["schedule"].iloc[0],
                   heads=g["heads"].iloc[0])
        row["n"] = len(s)
        row["success"] = float(s.mean())
        row["success_lo"], row["success_hi"] = wilson(int(s.sum()), len(s))
        for f in FACTORS:
            v = g[f"hit_{f}"].dropna() if f"hit_{f}" in g else pd.Series(dtype=object)
            row[f"hit_{f}"] = float(v.astype(bool).mean()) if len(v) else math.nan
        row["none_rate"] = float((g[LABEL_COLUMNS] == "none").any(axis=1).mean())
        row["loglik"] = float(g["loglik"].mean())
        if "identical_before" in g and g["identical_before"].notna().any():
            row["identical_before"] = float(g["identical_before"].astype(bool).mean())
        if "probe_accuracy" in g and g["probe_accuracy"].notna().any():
            row["probe_accuracy"] = float(g["probe_accuracy"].mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    ref = {}
    for _, r in out[out.control.isin(["unsteered", "prompted"])].iterrows():
        ref[(r.experiment, r.control, r.source, r.segment)] = r
    rnd = {}
    for _, r in out[out.control == "random"].iterrows():
        rnd[(r.experiment, r.source, r.segment, r.hook, r.alpha, r.branch, r.schedule, r.heads)] = r
    extra = []
    for _, r in out.iterrows():
        e: dict[str, Any] = {}
        u = ref.get((r.experiment, "unsteered", r.source, r.segment))
        p = ref.get((r.experiment, "prompted", r.source, r.segment))
        if u is not None:
            e["unsteered_success"] = u.success
            e["moved"] = r.success - u.success
            e["ll_drop"] = u.loglik - r.loglik
            if p is not None:
                e["ll_drop_prompted"] = u.loglik - p.loglik
        if p is not None:
            e["prompted_success"] = p.success
        if r.control == "none":
            q = rnd.get((r.experiment, r.source, r.segment, r.hook, r.alpha, r.branch, r.schedule, r.heads))
            if q is not None:
                e["random_success"] = q.success
                e["random_moved"] = q.success - (u.success if u is not None else 0.0)
        extra.append(e)
    out = pd.concat([out, pd.DataFrame(extra, index=out.index)], axis=1)
    for c in ("moved", "ll_drop", "ll_drop_prompted", "random_success", "random_moved",
              "unsteered_success", "prompted_success"):
        if c not in out:
            out[c] = math.nan
    allowed = 2 * out["ll_drop_prompted"].clip(lower=0.05)  # a prompted drop below 0.05 counts as 0.05
    out["aim_quality"] = (out["ll_drop"] <= allowed).where(out["ll_drop"].notna() & allowed.notna())
    # the part before a window / the audio prompt is not steered: no aim there
    unsteered_part = ((out.experiment == "window") | out.source.astype(str).str.startswith("audio")) & \
        (out.segment == 0)
    out["aim"] = ((out["success"] >= 0.8) & out["aim_quality"].fillna(False).astype(bool)
                  & (out["random_moved"] <= 0.05)).where((out.control == "none") & ~unsteered_part)
    return out


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}f}"
    return str(x)


_TITLES = {
    "methods": "1. Direction methods x layer (hook_resid_post, both branches, 0-2 s pulse, unconditional)",
    "hooks": "2. Where to steer at the best layer (0-2 s pulse, both branches) and cross-attention prompt substitution",
    "branch": "3. CFG branch and schedule, three kinds of source prompts",
    "window": "4. Time window: steering from 3 s (segment 0 = 0-3 s, segment 1 = 3-6 s)",
    "fusion": "5. Genre fusion: audio prompt of genre A (0-3 s) continued toward B; crossfade A->B (2 s segments)",
    "timbre": "6. Timbre transfer to brass with genre held",
}


def to_markdown(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """Markdown tables, one per experiment, plus the best settings that meet the aim."""
    s = summary if summary is not None else summarize(df)
    cols = ["arm", "control", "source", "segment", "n", "success", "ci95", "moved", "hit_genre",
            "hit_instrument", "none_rate", "loglik", "ll_drop", "ll_drop_prompted", "random_success",
            "random_moved", "aim"]
    lines = ["# Steering findings on the testbed", ""]
    best = df.attrs.get("best")
    if best:
        lines += [f"Best direction from experiment 1: **{best['method']}** at layer **{best['layer']}**"
                  " (used by experiments 2-6).", ""]
    seeds = sorted(df["seed"].unique().tolist())
    lines += [f"Seeds: {seeds}; clips per row = n. success = every target factor read by the grammar; "
              "moved = success - unsteered success (same source); ll_drop = unsteered loglik - loglik; "
              "aim = success >= 0.8, ll_drop <= 2 x prompted ll_drop, random moved <= 0.05.", ""]
    for exp, title in _TITLES.items():
        e = s[s.experiment == exp]
        if not len(e):
            continue
        lines += [f"## {title}", ""]
        extra = ["probe_accuracy"] if exp == "methods" else (["identical_before"] if exp == "window" else [])
        use = [c for c in cols if c != "segment" or exp in ("window", "fusion")] + extra
        if exp != "timbre":
            use = [c for c in use if c != "hit_instrument"]
        lines.append("| " + " | ".join(use) + " |")
        lines.append("|" + "---|" * len(use))
        for _, r in e.iterrows():
            vals = []
            for c in use:
                if c == "ci95":
                    vals.append(f"{r.success_lo:.2f}-{r.success_hi:.2f}")
                elif c == "aim":
                    vals.append("" if pd.isna(r.aim) else ("**yes**" if r.aim else "no"))
                else:
                    vals.append(_fmt(r.get(c)))
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    hit = s[s.aim.fillna(False).astype(bool)].sort_values("success", ascending=False)
    lines += ["## Settings that meet the aim", ""]
    if len(hit):
        for _, r in hit.head(12).iterrows():
            lines.append(f"- {r.experiment} / {r.arm} / source {r.source}: success {r.success:.2f} "
                         f"({r.success_lo:.2f}-{r.success_hi:.2f}), ll_drop {r.ll_drop:.2f} vs prompted "
                         f"{r.ll_drop_prompted:.2f}, random moved {r.random_moved:.2f}")
    else:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def write_findings(df: pd.DataFrame, out_dir: str | Path = HERE) -> tuple[Path, Path]:
    """Write ``findings.json`` and ``findings.md`` atomically.

    ``findings.json`` = ``{"best": {method, layer}, "columns": [...], "rows": [[...], ...]}`` (one
    row per clip and segment, floats to 4 significant digits): ``pd.DataFrame(rows, columns=columns)``
    gives back the tidy table.
    """
    out_dir = Path(out_dir)
    split = json.loads(df.to_json(orient="split", index=False, double_precision=4))
    payload = {"best": df.attrs.get("best"), "columns": split["columns"], "rows": split["data"]}
    jpath, mpath = out_dir / "findings.json", out_dir / "findings.md"
    atomic_write_bytes(jpath, (json.dumps(payload) + "\n").encode())
    atomic_write_bytes(mpath, to_markdown(df).encode())
    return jpath, mpath


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mstools.testbed.findings", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one target, few settings, one seed (~1 min)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1: 64 clips per row)")
    parser.add_argument("--out", default=str(HERE), help="directory for findings.json / findings.md")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..models import load_musicgen
    model = load_musicgen("testbed")
    seeds = None if args.seeds is None else list(range(args.seeds))
    t0 = time.monotonic()
    df = run_all(model, quick=args.quick, seeds=seeds, progress=True)
    print(to_markdown(df))
    print(f"{len(df)} rows in {time.monotonic() - t0:.0f} s")
    if not args.no_write:
        for p in write_findings(df, args.out):
            print(f"wrote {p}")


if __name__ == "__main__":
    main()
