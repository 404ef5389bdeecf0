"""Steering findings on the testbed, composed from the library only.

    python experiments/findings.py [--quick] [--seeds N] [--layers 2,3,4] [--prompts N] [--out DIR] [--no-write]

Directions come from :mod:`mstools.analysis` (difference of class means; ridge probes with the penalty
chosen by cross-validation; logistic probes) fitted on labelled features of procedural clips
(:func:`mstools.data.labelled.labelled_features`); every steering number comes from the instrument,
:func:`mstools.evaluation.steering` + :func:`mstools.evaluation.summarize`: paired unsteered twins,
>= 8 random directions of equal norm, the prompted control per source prompt, loglik drops and
selectivity. Seven experiments:

1. ``methods``  direction method x layer x strength (unconditional clips, a 0-2 s pulse, both branches);
   the best (method, layer) is used below;
2. ``hooks``    residual vs attention out vs MLP out vs cross-attention out vs all heads vs two heads;
3. ``branch``   cond vs both CFG branches, constant vs pulse, from three kinds of source prompts;
4. ``window``   steering from 3 s only (segments 0-3 s and 3-6 s; ``identical`` before the window);
5. ``fusion``   an audio prompt of genre A continued while steering to B from 3 s; a crossfade A -> B;
6. ``timbre``   instrument -> brass with the genre held (selectivity shows what is kept);
7. ``prompted`` steering against a prompt that names the source value (genre A -> B, soft -> loud).

Writes ``findings.md`` (tables) and ``findings.csv`` (one row per trial and segment) to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

import mstools
from mstools import evaluation
from mstools.analysis.directions import RECIPES, diff_means, from_probe
from mstools.analysis.probes import fit_probes
from mstools.core.fileio import atomic_write_text
from mstools.data.labelled import labelled_features
from mstools.data.sources import testbed_clips
from mstools.steering import Steering, SteeringVector, crossfade, window
from mstools.testbed import FACTORS, GENRES, make_dataset

HERE = Path(__file__).resolve().parent
METHODS = RECIPES
#: Source genre for each target: differs in scale, drum kit and order cue.
OPPOSITE = {"jazz": "rock", "rock": "jazz", "classical": "electronic", "electronic": "classical"}
PULSE = window(0.0, 2.0)
DURATION = 6.0


@dataclasses.dataclass
class Config:
    targets: tuple[str, ...]
    prompts: int          # source prompts per trial and seed
    clips: int            # labelled clips the directions are fitted on
    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    seeds: tuple[int, ...]
    draws: int = 8

    @classmethod
    def make(cls, quick: bool, model: Any, seeds: int | None = None) -> "Config":
        n = seeds or 1
        if quick:
            return cls(("jazz",), 4, 256, (1, model.num_layers - 1), (0.5,), tuple(range(n)), draws=8)
        return cls(GENRES, 16, 1024, tuple(range(model.num_layers)), (0.5, 1.0), tuple(range(n)))


class Directions:
    """Directions toward one factor value at one hook, fitted once per hook on labelled clips read
    with their prompts (``branch="cond"``) or with the null text (``"uncond"``)."""

    def __init__(self, model: Any, n_clips: int, seed: int = 101, branch: str = "cond"):
        self.model, self.n_clips, self.seed, self.branch = model, n_clips, seed, branch
        self._features: dict[str, tuple[torch.Tensor, pd.DataFrame]] = {}
        self._probes: dict[tuple, Any] = {}
        #: the ridge penalty cross-validation chose, per (hook, factor)
        self.alphas: dict[tuple[str, str], float | None] = {}

    def features(self, hook: str) -> tuple[torch.Tensor, pd.DataFrame]:
        if hook not in self._features:
            X, labels = labelled_features(self.model, testbed_clips(self.n_clips, DURATION, self.seed), [hook],
                                          branch=self.branch)
            self._features[hook] = (X[hook], labels)
        return self._features[hook]

    def vector(self, hook: str, factor: str, value: str, method: str) -> SteeringVector:
        X, labels = self.features(hook)
        if method == "diff_means":
            d = diff_means(X, labels[factor], value, hook=hook, target=factor)
        else:
            key = (hook, factor, method)
            if key not in self._probes:
                self._probes[key] = fit_probes({hook: X}, labels, factor, method)[hook]
                if method == "ridge":
                    self.alphas[(hook, factor)] = self._probes[key].meta.get("alpha")
            d = from_probe(self._probes[key], value)
        return SteeringVector.from_directions(d, self.model.fingerprint, shape={hook: self.model.hook_shape(hook)},
                                              meta={"method": method, "factor": factor, "value": value})


def run(model: Any, trials: list[evaluation.Trial], prompts: Sequence[str | None], cfg: Config,
        experiment: str, info: Callable[[evaluation.Trial], dict] | None = None, **kw: Any) -> pd.DataFrame:
    """One experiment's trials through the instrument -> its summary with an ``experiment`` column."""
    table = evaluation.steering(model, trials, prompts, seeds=cfg.seeds, duration=DURATION,
                                random_draws=cfg.draws, **kw)
    s = evaluation.summarize(table)
    s.insert(0, "experiment", experiment)
    extra = {t.name: (info(t) if info else {}) for t in trials}
    for col in sorted({k for v in extra.values() for k in v}):
        s[col] = s["trial"].map(lambda name, c=col: extra[name].get(c))
    return s


def _trial(name: str, vec: SteeringVector, a: float, target: dict, schedule: Any = PULSE,
           branch: str = "both", **kw: Any) -> evaluation.Trial:
    return evaluation.Trial(name, Steering(vec, a, schedule, branch=branch, heads=kw.pop("heads", None)),
                            target, **kw)


def exp_methods(model: Any, d: Directions, cfg: Config) -> pd.DataFrame:
    trials = [_trial(f"{m} L{l} a={a} -> {t}", d.vector(f"blocks.{l}.hook_resid_post", "genre", t, m), a,
                     {"genre": t}) for l in cfg.layers for m in METHODS for a in cfg.strengths for t in cfg.targets]
    info = {t.name: dict(method=t.name.split()[0], layer=int(t.name.split()[1][1:])) for t in trials}
    return run(model, trials, [None] * cfg.prompts, cfg, "methods", lambda t: info[t.name])


def best_setting(summary: pd.DataFrame) -> tuple[str, int]:
    """Method and layer with the highest mean success over targets, among settings that beat every
    random draw; ties go to the earlier layer."""
    s = summary[summary["beats_random"].fillna(False).astype(bool)]
    s = s if len(s) else summary
    g = s.groupby(["method", "layer"], as_index=False)["success"].mean()
    g = g.sort_values(["success", "layer"], ascending=[False, True])
    return str(g.iloc[0]["method"]), int(g.iloc[0]["layer"])


def exp_hooks(model: Any, d: Directions, cfg: Config, method: str, layer: int) -> pd.DataFrame:
    trials = []
    for kind in ("hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_cross_attn_out", "attn.hook_z"):
        hook = f"blocks.{layer}.{kind}"
        for t in cfg.targets:
            vec = d.vector(hook, "genre", t, method)
            variants = [(kind, None)]
            if kind == "attn.hook_z":  # the two heads holding most of the direction
                heads = sorted(vec[hook].norm(dim=1).argsort(descending=True)[:2].tolist())
                variants.append((f"attn.hook_z heads {heads}", heads))
            for label, heads in variants:
                trials.append(_trial(f"{label} -> {t}", vec, 0.5, {"genre": t}, heads=heads))
    return run(model, trials, [None] * cfg.prompts, cfg, "hooks",
               lambda t: dict(kind=t.name.split(" -> ")[0], method=method, layer=layer))


def source_prompts(source: str, target: str, n: int) -> list[str | None]:
    """``uncond`` (None), ``other`` (tempo / dynamics / instrument words, no genre) or ``genre`` (the
    opposite genre)."""
    if source == "uncond":
        return [None] * n
    if source == "genre":
        return [OPPOSITE[target]] * n
    words = [f"{dyn} {tempo} music with {inst}" for dyn in FACTORS["dynamics"] for tempo in FACTORS["tempo"]
             for inst in FACTORS["instrument"]]
    return [words[i % len(words)] for i in range(n)]


def exp_branch(model: Any, d: Directions, cfg: Config, method: str, layer: int) -> pd.DataFrame:
    hook = f"blocks.{layer}.hook_resid_post"
    parts = []
    for source in ("uncond", "other", "genre"):
        for t in cfg.targets:
            vec = d.vector(hook, "genre", t, method)
            trials = []
            for branch, a in (("both", 0.5), ("cond", 0.2)):
                for sched_name, sched in (("constant", None), ("pulse 0-2 s", PULSE)):
                    trials.append(_trial(f"{branch} {sched_name} a={a} -> {t}", vec, a, {"genre": t},
                                         schedule=sched, branch=branch,
                                         prompted=evaluation.swap_words({OPPOSITE[t]: t}, otherwise=t)))
            parts.append(run(model, trials, source_prompts(source, t, cfg.prompts), cfg, "branch",
                             lambda tr, s=source: dict(prompts=s, method=method, layer=layer)))
    return pd.concat(parts, ignore_index=True)


def exp_window(model: Any, d: Directions, cfg: Config, method: str, layer: int, t0: float = 3.0) -> pd.DataFrame:
    hook = f"blocks.{layer}.hook_resid_post"
    trials = [_trial(f"from {t0:g} s a={a} -> {t}", d.vector(hook, "genre", t, method), a, {"genre": t},
                     schedule=window(t0, None)) for t in cfg.targets for a in (0.5, 1.0)]
    # steering from step t0 * frame_rate reaches codebook k of frame t0 * frame_rate - k (delay
    # pattern): the untouched part ends (K - 1) frames before t0
    before = t0 - (model.num_codebooks - 1) / model.frame_rate
    return run(model, trials, [None] * cfg.prompts, cfg, "window",
               lambda tr: dict(method=method, layer=layer), segments=[(0.0, before), (t0, DURATION)])


def exp_fusion(model: Any, d: Directions, cfg: Config, method: str, layer: int) -> pd.DataFrame:
    hook = f"blocks.{layer}.hook_resid_post"
    parts = []
    for t in cfg.targets:
        src = OPPOSITE[t]
        clips = make_dataset(cfg.prompts, int(round(3.0 * model.frame_rate)), seed=400, genre=src)
        audio = model.decode_codes(torch.stack([c.codes for c in clips])).cpu()
        seg = {0: {"genre": src}, 1: {"genre": t}}
        trials = [_trial(f"audio {src} + steer from 3 s a={a} -> {t}", d.vector(hook, "genre", t, method), a,
                         {"genre": t}, schedule=window(3.0, None), segment_targets=seg, prompted=t)
                  for a in (0.5, 1.0)]
        parts.append(run(model, trials, [None] * cfg.prompts, cfg, "fusion", None, segments=3.0,
                         audio_prompt=audio, audio_prompt_sample_rate=model.sample_rate))
        w_a, w_b = crossfade(2.0, 4.0)
        va, vb = d.vector(hook, "genre", src, method), d.vector(hook, "genre", t, method)
        fade = evaluation.Trial(f"crossfade {src} -> {t} (2-4 s)",
                                [Steering(va, 0.5, w_a, branch="both"), Steering(vb, 0.5, w_b, branch="both")],
                                {"genre": t}, segment_targets={0: {"genre": src}, 2: {"genre": t}})
        parts.append(run(model, [fade], [None] * cfg.prompts, cfg, "fusion", None, segments=2.0))
    return pd.concat(parts, ignore_index=True)


def exp_timbre(model: Any, d: Directions, cfg: Config, method: str, layers: Sequence[int],
               target: str = "brass") -> pd.DataFrame:
    parts = []
    genres = [GENRES[i % len(GENRES)] for i in range(cfg.prompts)]
    sources = {"uncond": [None] * cfg.prompts, "genre": genres,
               "genre+instrument": [f"{g} with piano" for g in genres]}
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_post"
        vec = d.vector(hook, "instrument", target, method)
        for source, prompts in sources.items():
            trials = [_trial(f"L{layer} a={a} -> {target}", vec, a, {"instrument": target}, schedule=None,
                             prompted=evaluation.swap_words({"piano": target}, otherwise=None)
                             if source == "genre+instrument" else
                             (lambda p: target if p is None else f"{p} with {target}"))
                      for a in cfg.strengths]
            parts.append(run(model, trials, prompts, cfg, "timbre",
                             lambda tr, s=source, l=layer: dict(prompts=s, method=method, layer=l)))
    return pd.concat(parts, ignore_index=True)


#: Prompts that name the source dynamics ("soft") for the dynamics case of ``prompted``.
SOFT_PROMPTS = ("soft rock", "soft jazz with piano", "soft slow classical", "soft electronic with synth")
#: (branch, schedule name, schedule, strength) of the ``prompted`` experiment.
PROMPTED_SETTINGS = (("cond", "pulse 0-2 s", PULSE, 0.25), ("cond", "pulse 0-2 s", PULSE, 0.5),
                     ("both", "pulse 0-2 s", PULSE, 0.5), ("both", "pulse 0-2 s", PULSE, 1.0),
                     ("cond", "constant", None, 0.25))
#: The quality bar of a prompted setting: its loglik drop at most this many times the drop of
#: prompting the target instead (a prompted drop below ``LL_FLOOR`` counts as ``LL_FLOOR``).
LL_FACTOR, LL_FLOOR = 2.0, 0.05


def exp_prompted(model: Any, dirs: dict[str, Directions], cfg: Config, method: str) -> pd.DataFrame:
    """Steering against the text: the prompt names the source value ("rock", "rock with piano";
    "soft ..."), steering pushes to the target. Directions fitted on features read with the prompt
    (``fit=cond``) and with the null text (``fit=uncond``: only the audio tells the factor).

    Adds ``quality_ok`` (loglik drop within :data:`LL_FACTOR` x the prompted drop) and ``meets``
    (success >= 0.6, every random draw <= 0.15, quality_ok).
    """
    parts = []
    settings = PROMPTED_SETTINGS if len(cfg.layers) > 2 else PROMPTED_SETTINGS[:3]
    cases = [("genre", OPPOSITE[t], t, (OPPOSITE[t], f"{OPPOSITE[t]} with piano")) for t in cfg.targets]
    cases.append(("dynamics", "soft", "loud", SOFT_PROMPTS))
    for factor, src, tgt, forms in cases:
        prompts = [forms[i % len(forms)] for i in range(cfg.prompts)]
        trials, info = [], {}
        for fit, d in dirs.items():
            for layer in cfg.layers:
                vec = d.vector(f"blocks.{layer}.hook_resid_post", factor, tgt, method)
                for branch, sname, sched, a in settings:
                    name = f"{fit} L{layer} {branch} {sname} a={a} {src} -> {tgt}"
                    trials.append(_trial(name, vec, a, {factor: tgt}, schedule=sched, branch=branch,
                                         prompted=evaluation.swap_words({src: tgt})))
                    info[name] = dict(factor=factor, fit=fit, method=method, layer=layer, branch=branch,
                                      schedule=sname, strength=a)
        parts.append(run(model, trials, prompts, cfg, "prompted", lambda tr: info[tr.name]))
    out = pd.concat(parts, ignore_index=True)
    bar = LL_FACTOR * out["ll_drop_prompted"].clip(lower=LL_FLOOR)
    out["quality_ok"] = out["ll_drop"] <= bar
    out["meets"] = (out["success"] >= 0.6) & (out["random_max"] <= 0.15) & out["quality_ok"]
    return out


def run_all(model: Any, quick: bool = False, seeds: int | None = None, log: Callable[[str], None] = print,
            layers: Sequence[int] | None = None, prompts: int | None = None,
            on_part: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """All seven experiments; returns one summary table (``experiment`` column first).

    ``layers`` / ``prompts`` override the configuration's layers and source prompts per trial and seed;
    ``on_part`` receives the table so far after each experiment (to save partial results).
    """
    torch.manual_seed(0)
    cfg = Config.make(quick, model, seeds)
    if layers is not None:
        cfg = dataclasses.replace(cfg, layers=tuple(layers))
    if prompts is not None:
        cfg = dataclasses.replace(cfg, prompts=int(prompts))
    d = Directions(model, cfg.clips)
    d_audio = Directions(model, cfg.clips, branch="uncond")
    t0 = time.monotonic()
    methods = exp_methods(model, d, cfg)
    method, layer = best_setting(methods)
    log(f"[{time.monotonic() - t0:6.0f} s] methods: best {method} at layer {layer}")
    parts = [methods]
    for name, fn in (("hooks", lambda: exp_hooks(model, d, cfg, method, layer)),
                     ("branch", lambda: exp_branch(model, d, cfg, method, layer)),
                     ("window", lambda: exp_window(model, d, cfg, method, layer)),
                     ("fusion", lambda: exp_fusion(model, d, cfg, method, layer)),
                     ("timbre", lambda: exp_timbre(model, d, cfg, method, sorted({layer, cfg.layers[-1]}))),
                     ("prompted", lambda: exp_prompted(model, {"cond": d, "uncond": d_audio}, cfg, method))):
        parts.append(fn())
        log(f"[{time.monotonic() - t0:6.0f} s] {name} done")
        if on_part is not None:
            on_part(pd.concat(parts, ignore_index=True))
    out = pd.concat(parts, ignore_index=True)
    out.attrs["best"] = {"method": method, "layer": layer}
    out.attrs["alphas"] = {(f"{h} ({how})", f): a for how, dd in (("with prompts", d), ("null text", d_audio))
                           for (h, f), a in dd.alphas.items()}
    return out


COLUMNS = ["trial", "prompts", "segment", "n", "success", "success_lo", "success_hi", "base_rate", "moved",
           "moved_lo", "moved_hi", "random_mean", "random_sd", "random_min", "random_max", "prompted", "ll_drop",
           "ll_drop_prompted", "quality_ok", "meets", "identical",
           *[f"{k}{f}" for f in FACTORS for k in ("kept_", "random_kept_")]]


def to_markdown(summary: pd.DataFrame) -> str:
    """One table per experiment."""
    lines = ["# Steering findings on the testbed", ""]
    best = summary.attrs.get("best")
    if best:
        lines += [f"Best direction from experiment 1: **{best['method']}** at layer **{best['layer']}**.", ""]
    alphas = summary.attrs.get("alphas")
    if alphas:
        lines += ["Ridge penalties chosen by 5-fold cross-validation by clip (`fit_probes`, `alpha=\"cv\"`): "
                  + ", ".join(f"{h} {f}: {a:g}" for (h, f), a in sorted(alphas.items()) if a is not None) + ".", ""]
    lines += ["Every number comes from `mstools.evaluation` (paired unsteered twins, random directions of "
              "equal norm, prompted control per source prompt). success = share of steered clips on "
              "target (95 % interval); base_rate = share of the paired unsteered clips already on target; "
              "moved = success - base_rate; random = success of each random draw (mean, sd, min, max); "
              "ll_drop = unsteered loglik - steered loglik (prompted: the same for prompting the target); "
              "kept_<factor> = share of clips whose other factors equal their unsteered twin's.", ""]
    for exp in summary["experiment"].unique():
        e = summary[summary["experiment"] == exp]
        cols = [c for c in COLUMNS if c in e and e[c].notna().any()
                and not (c == "segment" and e[c].nunique() == 1)]
        lines += [f"## {exp}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, r in e.iterrows():
            vals = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one target, few prompts, two layers")
    p.add_argument("--seeds", type=int, default=None, help="generation seeds (default 1)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for findings.md and findings.csv")
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    p.add_argument("--backend", default="audiocraft", choices=("audiocraft", "transformers"))
    p.add_argument("--layers", default=None, help="comma-separated layers (default: every layer)")
    p.add_argument("--prompts", type=int, default=None, help="source prompts per trial and seed (default 16)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = mstools.load_musicgen("testbed", backend=args.backend)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    bad = [x for x in layers or [] if not 0 <= x < model.num_layers]
    if bad:
        p.error(f"--layers {bad} outside 0..{model.num_layers - 1}")
    out = Path(args.out)

    def save_part(part: pd.DataFrame) -> None:
        if not args.no_write:
            atomic_write_text(out / "findings.partial.csv", part.to_csv(index=False))

    summary = run_all(model, quick=args.quick, seeds=args.seeds, layers=layers, prompts=args.prompts,
                      on_part=save_part, log=lambda m: print(m, flush=True))
    md = to_markdown(summary)
    print(md)
    if not args.no_write:
        atomic_write_text(out / "findings.md", md)
        atomic_write_text(out / "findings.csv", summary.to_csv(index=False))
        (out / "findings.partial.csv").unlink(missing_ok=True)
        print(f"wrote {out / 'findings.md'} and {out / 'findings.csv'}")


if __name__ == "__main__":
    main()
