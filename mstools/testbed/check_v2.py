"""Prompted steering and probe selectivity on the testbed, measured with the library.

    python -m mstools.testbed.check_v2 [--weights DIR] [--quick] [--seeds 8] [--out FILE.json]

1. **Directions.** Mean-pooled ``hook_resid_post`` of every layer on 1,024 procedural clips
   (:func:`mstools.testbed.findings.pooled_features`, clips with their prompts); per target a
   difference of means (:func:`mstools.directions.diff_means`) and a logistic-probe direction
   (:func:`mstools.probes.fit_probes` + :func:`mstools.directions.from_probe`).
2. **Screen.** Every (method, layer, strength, CFG branch, schedule) setting in batched
   :func:`mstools.steering.sweep` calls on prompts that name the source ("rock" steered to jazz,
   the genre that differs in scale, drum kit and order; "soft ..." steered to loud), a few clips
   per setting, scored by the grammar (:func:`mstools.testbed.score`).
3. **Confirm** the best screened settings over ``--seeds`` seeds, one batched generate per seed with
   the controls of :func:`mstools.evaluate.steering` (unsteered, a random direction of equal norm per
   hook from :func:`mstools.evaluate.random_like`, a new draw per seed: the random control is
   reported as mean / min / max over seeds; the target named in the prompt instead), summarised
   with :func:`mstools.lessons.compare`. ``ll_drop`` = unsteered loglik - steered loglik (grammar
   loglik per frame); the aim is ``ll_drop <= 2 * ll_drop(prompted)`` (a prompted drop below 0.05
   counts as 0.05), success >= 0.6 and random <= 0.15.
4. **Probes.** Genre probes (logistic, split by clip, 3 seeds) per layer for the trained model and
   an untrained one of the same shape, on clips read with the null text (only audio tells genre)
   and with their prompts (the prompt names the genre in 70 % of clips, so the text itself is
   readable there, even by random weights).

Results are printed as tables and written as JSON (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..directions import diff_means, from_probe
from ..lessons import compare
from ..probes import fit_probes, probe_sweep
from ..steering import Steering, SteeringVector, steering_hooks, window
from .captions import SIMILAR_GENRE
from .findings import pooled_features
from .music import GENRE_SPEC, GENRES
from .score import score

__all__ = ["load_hooked", "directions", "all_directions", "screen", "confirm", "probe_table", "to_markdown", "GENRE_TARGETS", "SOFT_PROMPTS",
           "KINDS", "METHODS", "main"]

#: Genre steering experiments: source genre (named by the prompt) -> target genre.
#: ``scale_kit``: the target differs in scale and drum kit, same order cues (rock -> classical);
#: ``order``: same scale and kit, other order cues (rock -> electronic);
#: ``both``: differs in everything (rock -> jazz).
GENRE_TARGETS: dict[str, dict[str, str]] = {
    "scale_kit": {g: next(h for h in GENRES if GENRE_SPEC[h].direction == GENRE_SPEC[g].direction and h != g)
                  for g in GENRES},
    "order": dict(SIMILAR_GENRE),
    "both": {g: next(h for h in GENRES if GENRE_SPEC[h].direction != GENRE_SPEC[g].direction
                     and GENRE_SPEC[h].scale != GENRE_SPEC[g].scale) for g in GENRES},
}
SOFT_PROMPTS = ("soft rock", "soft jazz with piano", "soft slow classical", "soft electronic with synth")
KINDS = ("genre_scale_kit", "genre_order", "genre_both", "dynamics")
METHODS = ("diff_means", "diff_means_src", "logistic", "logistic_src")
DURATION = 6.0


def _log(msg: str) -> None:
    print(f"[check_v2 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_hooked(weights: str | Path | None = None) -> Any:
    """The trained testbed (default weights or ``weights``) as a HookedMusicGen named ``testbed``."""
    from ..hooked import HookedMusicGen
    from ..models import _testbed_reference
    from .model import load_testbed_musicgen
    model = HookedMusicGen(load_testbed_musicgen(weights), name="testbed")
    model.reference_codes = _testbed_reference
    return model


def _vector(direction: Any, model: Any) -> SteeringVector:
    return SteeringVector({direction.hook: direction.vector}, model.fingerprint,
                          source=f"{direction.method}:{direction.label}@{direction.hook}", units="unit")


def directions(model: Any, factor: str, pairs: Sequence[tuple[str | None, str]], layers: Sequence[int], *,
               n_clips: int = 1024, prompted: bool = True) -> dict[tuple, SteeringVector]:
    """Unit ``hook_resid_post`` directions toward ``factor=target`` for every ``(source, target)`` pair:
    ``{(source, target, method, layer): SteeringVector}``.

    Methods (:data:`METHODS`): ``diff_means`` (target mean minus the mean of the other classes'
    means), ``diff_means_src`` (target mean minus source mean), ``logistic`` (the multinomial probe's
    target column), ``logistic_src`` (target column minus source column).
    """
    hooks = [f"blocks.{l}.hook_resid_post" for l in layers]
    X, labels = pooled_features(model, hooks, n_clips=n_clips, prompted=prompted)
    probes = fit_probes(X, labels, factor, "logistic")
    out = {}
    for l, h in zip(layers, hooks):
        for src, tgt in pairs:
            other = src if src is not None else next(v for v in sorted(set(labels[factor])) if v != tgt)
            out[(src, tgt, "diff_means", l)] = _vector(diff_means(X[h], labels[factor], tgt, hook=h, target=factor), model)
            out[(src, tgt, "diff_means_src", l)] = _vector(
                diff_means(X[h], labels[factor], tgt, minus=other, hook=h, target=factor), model)
            out[(src, tgt, "logistic", l)] = _vector(from_probe(probes[h], tgt), model)
            out[(src, tgt, "logistic_src", l)] = _vector(from_probe(probes[h], tgt, minus=other), model)
    return out


def all_directions(model: Any, layers: Sequence[int], n_clips: int = 1024) -> dict[tuple, SteeringVector]:
    """Directions for every experiment of :data:`KINDS`."""
    genre_pairs = sorted({(a, b) for t in GENRE_TARGETS.values() for a, b in t.items()})
    return {**directions(model, "genre", genre_pairs, layers, n_clips=n_clips),
            **directions(model, "dynamics", [("soft", "loud")], layers, n_clips=n_clips)}


def _hit(df: pd.DataFrame, target: dict[str, str]) -> np.ndarray:
    ok = np.ones(len(df), dtype=bool)
    for f, v in target.items():
        ok &= (df[f] == v).to_numpy()
    return ok


def _cases(kind: str) -> list[tuple[str, str, dict[str, str], str]]:
    """``(source prompt, prompt naming the target instead, target labels, source value)``."""
    if kind.startswith("genre_"):
        out = []
        for a, b in GENRE_TARGETS[kind[len("genre_"):]].items():
            for form in ("{}", "{} with piano"):
                out.append((form.format(a), form.format(b), {"genre": b}, a))
        return out
    if kind == "dynamics":
        return [(p, p.replace("soft", "loud"), {"dynamics": "loud"}, "soft") for p in SOFT_PROMPTS]
    raise ValueError(f"unknown experiment {kind!r}; choose from {KINDS}")


def _steering(setting: dict, vectors: dict, source: str, target: dict) -> Steering:
    value = next(iter(target.values()))
    sched = None if setting["schedule"] == "constant" else window(*setting["schedule"])
    return Steering(vectors[(source, value, setting["method"], setting["layer"])], setting["strength"], sched,
                    branch=setting["branch"])


def _name(setting: dict) -> str:
    sched = setting["schedule"]
    sched = sched if sched == "constant" else f"{sched[0]:g}-{sched[1]:g} s"
    return f"{setting['method']} L{setting['layer']} {setting['branch']} {sched} a={setting['strength']:g}"


def screen(model: Any, kind: str, settings: Sequence[dict], vectors: dict, *, clips_per_case: int = 2,
           seed: int = 0, rows_per_call: int = 320) -> pd.DataFrame:
    """Success and loglik drop of each setting on every case of ``kind`` (few clips each).

    ``settings``: dicts with ``method, layer, strength, branch`` and ``schedule`` (``"constant"`` or a
    ``(t0, t1)`` window in seconds). Many settings share one generate: each row follows its own
    setting (:func:`mstools.steering.steering_hooks`); every call also holds the unsteered and the
    prompted (target named in the text) rows of each case. One row per setting, best first:
    ``hit, ll_drop, none, ll_drop_prompted, quality_ok`` (``ll_drop <= 2 * max(ll_drop_prompted, 0.05)``).
    """
    cases = _cases(kind)
    per_setting = len(cases) * clips_per_case
    chunk = max(1, rows_per_call // per_setting - 2)
    rows = []
    for start in range(0, len(settings), chunk):
        part: list = ["unsteered", "prompted"] + list(settings[start:start + chunk])
        prompts, pairs, meta = [], [], []
        for i, st in enumerate(part):
            for src, prompted, target, source in cases:
                idx = list(range(len(prompts), len(prompts) + clips_per_case))
                prompts += [prompted if st == "prompted" else src] * clips_per_case
                meta += [(i, src, target)] * clips_per_case
                if isinstance(st, dict):
                    pairs.append((_steering(st, vectors, source, target), idx))
        out = model.generate(prompts, DURATION, seed=seed, decode=False, fwd_hooks=steering_hooks(model, pairs))
        sc = score(out.codes)
        sc["setting"], sc["case"] = [m[0] for m in meta], [m[1] for m in meta]
        sc["hit"] = [all(sc.at[j, f] == v for f, v in m[2].items()) for j, m in enumerate(meta)]
        sc["none"] = (sc[["genre", "tempo", "instrument", "dynamics"]] == "none").any(axis=1)
        for i, st in enumerate(part):
            key = st if isinstance(st, str) else json.dumps(st, sort_keys=True)
            for src, g in sc[sc.setting == i].groupby("case"):
                rows.append(dict(key=key, case=src, hit=g.hit.mean(), loglik=g.loglik.mean(), none=g.none.mean()))
    df = pd.DataFrame(rows)
    base = df[df.key == "unsteered"].groupby("case")[["hit", "loglik"]].mean()
    prompted_drop = float((base["loglik"] - df[df.key == "prompted"].groupby("case")["loglik"].mean()).mean())
    steered = df[~df.key.isin(["unsteered", "prompted"])].copy()
    steered["ll_drop"] = steered["case"].map(base["loglik"]) - steered["loglik"]
    out = steered.groupby("key", sort=False)[["hit", "ll_drop", "none"]].mean().reset_index()
    out = pd.concat([out.drop(columns="key"), pd.DataFrame([json.loads(k) for k in out.key])], axis=1)
    out["schedule"] = [v if isinstance(v, str) else tuple(v) for v in out["schedule"]]
    out["ll_drop_prompted"] = prompted_drop
    out["quality_ok"] = out["ll_drop"] <= 2 * max(prompted_drop, 0.05)
    out.attrs["unsteered_hit"] = float(base["hit"].mean())
    out.attrs["prompted_hit"] = float(df[df.key == "prompted"]["hit"].mean())
    return out.sort_values(["quality_ok", "hit", "ll_drop"], ascending=[False, False, True]).reset_index(drop=True)


def confirm(model: Any, kind: str, setting: dict, vectors: dict, *, seeds: Sequence[int], n: int = 4
            ) -> tuple[dict, pd.DataFrame]:
    """One setting on every case of ``kind`` over ``seeds``, beside its controls.

    One batched generate per seed holds, for every case, ``n`` clips each of: the source prompt
    unsteered, steered, steered with a random direction of equal norm per hook
    (:func:`mstools.evaluate.random_like`, a new draw per seed and case) and the prompt naming the
    target instead. The table has the columns of :func:`mstools.evaluate.steering` (``trial`` = the
    case) and is summarised per case with :func:`mstools.lessons.compare`.

    Returns the summary row (success with its 95 % Wilson interval; random success as mean / min /
    max over seeds, each seed pooled over cases; unsteered and prompted success; loglik drops) and
    the compare table.
    """
    from ..evaluate import random_like, wilson
    cases = _cases(kind)
    frames = []
    for seed in seeds:
        prompts, pairs, meta = [], [], []
        for ci, (src, prompted_text, target, source) in enumerate(cases):
            st = _steering(setting, vectors, source, target)
            rnd = dataclasses.replace(st, vector=random_like(st.vector, 1000 * seed + ci))
            for control, text, steer in (("unsteered", src, None), ("none", src, st), ("random", src, rnd),
                                         ("prompted", prompted_text, None)):
                idx = list(range(len(prompts), len(prompts) + n))
                prompts += [text] * n
                meta += [(src, control, target)] * n
                if steer is not None:
                    pairs.append((steer, idx))
        out = model.generate(prompts, DURATION, seed=seed, decode=False, fwd_hooks=steering_hooks(model, pairs))
        df = score(out.codes)
        df["trial"], df["control"], df["seed"] = [m[0] for m in meta], [m[1] for m in meta], seed
        df["case"], df["prompt"] = df["trial"], prompts
        for f in sorted({f for _, _, t, _ in cases for f in t}):
            df[f"target_{f}"] = [None if m[1] == "unsteered" else m[2].get(f) for m in meta]
            df[f"hit_{f}"] = (df[f] == df[f"target_{f}"]).where(df[f"target_{f}"].notna())
        hit_cols = [c for c in df.columns if c.startswith("hit_")]
        df["success"] = df[hit_cols].apply(lambda r: bool(all(x for x in r if pd.notna(x)))
                                           if r.notna().any() else None, axis=1)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    table = compare(df, by=("case",)).droplevel("case")
    want = {src: target for src, _, target, _ in cases}

    def hit(g: pd.DataFrame) -> float:
        return float(np.mean([all(r[f] == v for f, v in want[r["case"]].items()) for _, r in g.iterrows()]))

    steered, rnd = df[df.control == "none"], df[df.control == "random"]
    plain, prompted = df[df.control == "unsteered"], df[df.control == "prompted"]
    random_per_seed = [hit(g) for _, g in rnd.groupby("seed")]
    ll_u = float(plain.loglik.mean())
    k = int(round(hit(steered) * len(steered)))
    lo, hi = wilson(k, len(steered))
    row = dict(kind=kind, setting=_name(setting), **{k2: (list(v) if isinstance(v, tuple) else v)
                                                       for k2, v in setting.items()},
               n=len(steered), success=hit(steered), success_lo=lo, success_hi=hi,
               random_mean=float(np.mean(random_per_seed)), random_min=float(np.min(random_per_seed)),
               random_max=float(np.max(random_per_seed)), random_draws=len(random_per_seed),
               unsteered=hit(plain), prompted=hit(prompted),
               ll_drop=ll_u - float(steered.loglik.mean()), ll_drop_random=ll_u - float(rnd.loglik.mean()),
               ll_drop_prompted=ll_u - float(prompted.loglik.mean()),
               none_rate=float((steered[["genre", "tempo", "instrument", "dynamics"]] == "none").any(axis=1).mean()))
    if kind == "dynamics":   # the genre the prompt names should stay
        src_genre = steered["case"].map(lambda p: next(g for g in GENRES if g in p))
        row["genre_kept"] = float((steered["genre"] == src_genre).mean())
    else:                    # share of steered clips that kept the source genre
        row["became_source"] = float((steered["genre"] == steered["case"].map(lambda p: p.split()[0])).mean())
    row["quality_ok"] = bool(row["ll_drop"] <= 2 * max(row["ll_drop_prompted"], 0.05))
    row["aim"] = bool(row["success"] >= 0.6 and row["random_mean"] <= 0.15 and row["quality_ok"])
    return row, table


def probe_table(model: Any, *, seeds: Sequence[int] = (0, 1, 2), n_clips: int = 1024) -> pd.DataFrame:
    """Genre probe accuracy per layer: trained vs untrained (same shape), null text and prompted."""
    from ..lessons import untrained_testbed
    untrained = untrained_testbed(seed=0)
    hooks = [f"blocks.{l}.hook_resid_post" for l in range(model.num_layers)]
    rows = []
    for prompted in (False, True):
        Xt, labels = pooled_features(model, hooks, n_clips=n_clips, prompted=prompted)
        Xu, _ = pooled_features(untrained, hooks, n_clips=n_clips, prompted=prompted)
        sw = probe_sweep({"trained": Xt, "untrained": Xu}, labels, targets=("genre",), methods=("logistic",),
                         seeds=seeds, controls=("shuffled",))
        acc = sw.groupby(["model", "control", "layer"]).accuracy.mean().unstack(["model", "control"])
        for layer, r in acc.iterrows():
            rows.append(dict(text="prompt" if prompted else "null", layer=int(layer),
                             trained=r[("trained", "none")], untrained=r[("untrained", "none")],
                             selectivity=r[("trained", "none")] - r[("untrained", "none")],
                             shuffled=r[("trained", "shuffled")]))
    return pd.DataFrame(rows)


def _stage1(layers: Sequence[int]) -> list[dict]:
    """Every method and layer at one middle setting (both branches, 0-2 s pulse, 0.5 x mean norm)."""
    return [dict(method=m, layer=int(l), strength=0.5, branch="both", schedule=(0.0, 2.0))
            for m, l in itertools.product(METHODS, layers)]


def _stage2(method: str, layer: int, quick: bool) -> list[dict]:
    """Strengths, branches and schedules around one (method, layer)."""
    strengths = {"both": (0.35, 0.5, 0.75) if quick else (0.25, 0.35, 0.5, 0.75, 1.0),
                 "cond": (0.15, 0.25) if quick else (0.1, 0.15, 0.25, 0.35)}
    schedules = ((0.0, 1.0), (0.0, 2.0), "constant")
    return [dict(method=method, layer=int(layer), strength=float(a), branch=b, schedule=sch)
            for b in ("both", "cond") for sch in schedules for a in strengths[b]]


def _show(df: pd.DataFrame, n: int = 10) -> str:
    cols = ["hit", "ll_drop", "none", "quality_ok", "method", "layer", "branch", "schedule", "strength"]
    return df.head(n)[cols].to_string(float_format=lambda x: f"{x:.3f}")


def to_markdown(results: dict) -> str:
    """The confirmed settings and the probe table of a results dict as markdown tables."""
    lines = ["| experiment | setting | success (95 % CI) | random: mean [min, max] over draws | unsteered | "
             "prompted | loglik drop: steered / random / prompted | aim |", "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        for r in results.get(f"confirm_{kind}", []):
            lines.append(f"| {kind} | {r['setting']} | {r['success']:.2f} ({r['success_lo']:.2f}-{r['success_hi']:.2f}) | "
                         f"{r['random_mean']:.3f} [{r['random_min']:.2f}, {r['random_max']:.2f}] ({r['random_draws']}) | "
                         f"{r['unsteered']:.2f} | {r['prompted']:.2f} | {r['ll_drop']:.3f} / {r['ll_drop_random']:.3f} / "
                         f"{r['ll_drop_prompted']:.3f} | {'yes' if r['aim'] else 'no'} |")
    if results.get("probes"):
        pt = pd.DataFrame(results["probes"])
        lines += ["", "| text | " + " | ".join(f"L{l}" for l in sorted(pt.layer.unique())) + " |",
                  "|---|" + "---|" * pt.layer.nunique()]
        for text, g in pt.groupby("text", sort=False):
            for col in ("trained", "untrained", "selectivity"):
                lines.append(f"| {text}: {col} | " + " | ".join(f"{v:.2f}" for v in g.sort_values("layer")[col]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mstools.testbed.check_v2", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None, help="weights directory (default: the shipped one)")
    parser.add_argument("--quick", action="store_true", help="fewer settings and seeds")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"experiments, from {KINDS}")
    parser.add_argument("--seeds", type=int, default=8, help="seeds of the confirmation (= random draws)")
    parser.add_argument("--top", type=int, default=1, help="screened settings confirmed per criterion")
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    model = load_hooked(args.weights)
    layers = list(range(model.num_layers))
    results: dict[str, Any] = {"weights": str(args.weights or "shipped"), "model": repr(model)}
    vectors = all_directions(model, layers)
    _log(f"directions ready ({time.monotonic() - t0:.0f} s)")
    cpc = 1 if args.quick else 2
    for kind in args.kinds.split(","):
        s1 = screen(model, kind, _stage1(layers), vectors, clips_per_case=cpc)
        best = s1.sort_values(["hit", "ll_drop"], ascending=[False, True]).head(2)
        grid = [st for _, b in best.iterrows() for st in _stage2(b["method"], b["layer"], args.quick)]
        s2 = screen(model, kind, grid, vectors, clips_per_case=2 * cpc, seed=1)
        _log(f"{kind}: unsteered {s1.attrs['unsteered_hit']:.2f}, prompted {s1.attrs['prompted_hit']:.2f} "
             f"(loglik drop {s1.ll_drop_prompted.iloc[0]:.3f})\nstage 1 (method x layer):\n{_show(s1, 8)}"
             f"\nstage 2:\n{_show(s2, 12)}")
        results[f"screen_{kind}"] = {"stage1": s1.to_dict(orient="records"), "stage2": s2.to_dict(orient="records"),
                                     "unsteered": s1.attrs["unsteered_hit"], "prompted": s1.attrs["prompted_hit"]}
        # confirm: the best settings whose screened loglik drop is well inside the bound (the screen
        # is noisy), the best inside it, the cheapest of the strong ones, the strongest
        bound = 2 * max(float(s2.ll_drop_prompted.iloc[0]), 0.05)
        strong = s2[s2.hit >= 0.75].sort_values("ll_drop")
        picks = pd.concat([s2[s2.ll_drop <= bound / 2].head(args.top), s2[s2.quality_ok].head(args.top),
                           strong.head(1), s2.sort_values(["hit", "ll_drop"], ascending=[False, True]).head(1)])
        rows, seen = [], set()
        for _, p in picks.iterrows():
            setting = dict(method=p["method"], layer=int(p["layer"]), strength=float(p["strength"]),
                           branch=p["branch"], schedule=p["schedule"])
            if _name(setting) in seen:
                continue
            seen.add(_name(setting))
            row, _ = confirm(model, kind, setting, vectors, seeds=range(2 if args.quick else args.seeds))
            rows.append(row)
            _log(f"confirm {kind} {_name(setting)}: " + json.dumps(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                 if k not in ("method", "layer", "strength", "branch", "schedule")}))
        results[f"confirm_{kind}"] = rows
    if not args.no_probes:
        pt = probe_table(model, seeds=(0,) if args.quick else (0, 1, 2))
        _log("genre probes per layer:\n" + pt.round(3).to_string())
        results["probes"] = pt.to_dict(orient="records")
    results["wall_s"] = round(time.monotonic() - t0, 1)
    print(to_markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
        _log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
