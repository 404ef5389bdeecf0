"""The main job: the whole method on the testbed, end to end, into one HTML report.

    python -m mstools demo [--out outputs] [--quick] [--backend audiocraft|transformers]

1. cache mean-pooled residual activations of procedural clips (known labels) for the trained testbed
   and an untrained model of the same shape, into activation stores;
2. fit probes for every layer (logistic and ridge), with shuffled-label and untrained-model controls,
   for genre, tempo, instrument and dynamics; plot layer curves;
3. make genre directions (difference of means, probe weights), compare them (cosine), project the
   activations (PCA, UMAP) with the directions drawn in;
4. steer generation with those directions and measure it with the instrument
   (:mod:`mstools.evaluation`: paired unsteered twins, random directions, prompted control);
5. write ``report.html`` (a computed summary first, then figures, tables, audio players), the wav
   files, ``probes.csv``, ``steering.csv`` and ``results.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mstools import evaluation
from mstools.analysis import probes
from mstools.analysis.directions import cosine_matrix, diff_means, from_probe
from mstools.analysis.projections import direction_arrows, pca, umap_embed
from mstools.core.fileio import atomic_write_json
from mstools.core.names import BACKENDS
from mstools.data.caching import cache_activations
from mstools.data.pooling import Pooling
from mstools.data.sources import testbed_clips
from mstools.model.loading import load_musicgen
from mstools.steering import Steering, SteeringVector, apply, schedules
from mstools.testbed import FACTORS, GENRES
from mstools.ui import plots
from mstools.ui.audio import spectrogram, write_wav
from mstools.ui.report import Report

__all__ = ["run_demo", "demo_models", "DemoConfig", "configure", "run", "reading", "TEXTS"]

#: How cached clips are read: with their prompts (CFG's conditional branch) or with the null text.
TEXTS = {"prompt": "cond", "null": "uncond"}


@dataclasses.dataclass
class DemoConfig:
    clips: int = 384
    seconds: float = 6.0
    probe_seeds: tuple[int, ...] = (0, 1, 2)
    steer_prompts: int = 16
    steer_seeds: tuple[int, ...] = (0, 1)
    strengths: tuple[float, ...] = (0.5, 1.0)
    random_draws: int = 8
    umap: bool = True

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(clips=96, seconds=4.0, probe_seeds=(0, 1), steer_prompts=4, steer_seeds=(0,),
                   strengths=(0.5,), random_draws=8, umap=True)


def _log(msg: str) -> None:
    print(f"[mstools demo] {msg}", flush=True)


def demo_models(seed: int = 0, backend: str = "audiocraft") -> tuple[Any, Any]:
    """The trained testbed and an untrained model of the same shape, both on ``backend``.

    >>> model, untrained = demo_models(0, "transformers")
    >>> model.backend_name, untrained.model_name
    ('transformers', 'testbed-untrained')
    """
    return (load_musicgen("testbed", device="cpu", backend=backend),
            load_musicgen("testbed-untrained", device="cpu", backend=backend, seed=seed))


def reading(probe_summary: pd.DataFrame, steer_summary: pd.DataFrame, genre_hook: str) -> list[str]:
    """What the run shows, as sentences computed from its own numbers (the report's first section)."""
    lines = []
    for text in ("null", "prompt"):
        s = probe_summary.query("text == @text and control == 'none' and method == 'logistic' "
                                "and target == 'genre'")
        if s.empty:
            continue
        tr, un = s[s.model == "trained"].set_index("layer"), s[s.model == "untrained"].set_index("layer")
        shuffled = probe_summary.query("text == @text and control == 'shuffled' and model == 'trained' "
                                       "and method == 'logistic' and target == 'genre'")["accuracy_mean"]
        top = tr["accuracy_mean"].max()
        best = int(tr.index[tr["accuracy_mean"] >= top - 0.005].min())   # earliest layer at the top
        sel = (tr["accuracy_mean"] - un["accuracy_mean"]).dropna()
        how = ("With the null text (only the audio tells the genre)" if text == "null" else
               "With the clips' prompts (which name the genre in most clips)")
        lines.append(
            f"{how}, genre is read best from layer {best} on (logistic probe, held-out accuracy "
            f"{tr.loc[best, 'accuracy_mean']:.2f}); an untrained model of the same shape reads it at "
            f"{un.loc[best, 'accuracy_mean']:.2f} there (selectivity "
            f"{tr.loc[best, 'accuracy_mean'] - un.loc[best, 'accuracy_mean']:.2f}; largest "
            f"{sel.max():.2f}, at layer {int(sel.idxmax())}), shuffled labels give {shuffled.mean():.2f}.")
    by = steer_summary.groupby(["method", "strength"], as_index=False).agg(
        success=("success", "mean"), base=("base_rate", "mean"), random=("random_mean", "mean"),
        random_max=("random_max", "max"), ll_drop=("ll_drop", "mean"), prompted_drop=("ll_drop_prompted", "mean"))
    top = by.sort_values("success", ascending=False).iloc[0]
    prompted = (f"prompting the genre instead costs {top['prompted_drop']:.2f}" if top["prompted_drop"] >= 0 else
                f"prompting the genre instead raises it by {-top['prompted_drop']:.2f}")
    lines.append(
        f"Steering at {genre_hook} works best with the {top['method']} direction at strength "
        f"{top['strength']:g}: {top['success']:.2f} of clips reach the target genre, against a base "
        f"rate of {top['base']:.2f} for the same unsteered clips and {top['random']:.2f} for random "
        f"directions of the same norm (mean of the draws; the highest single draw reached "
        f"{top['random_max']:.2f}); it lowers the grammar log-likelihood by {top['ll_drop']:.2f} nats "
        f"per frame, {prompted}.")
    spans = []
    for strength, part in by.groupby("strength"):
        if len(part) > 1:
            lo, hi = part.sort_values("success").iloc[[0, -1]].itertuples()
            spans.append(f"at strength {strength:g} from {lo.success:.2f} ({lo.method}) to "
                         f"{hi.success:.2f} ({hi.method})")
    if spans:
        lines.append("The recipes compared at equal strength: " + "; ".join(spans) + ".")
    return lines


def run_demo(out: str | Path = "outputs", quick: bool = False, seed: int = 0,
             backend: str = "audiocraft") -> Path:
    """Run the pipeline on the testbed (on ``backend``) and write ``out/report.html``; returns its path.

    >>> run_demo("outputs", quick=True, backend="transformers")       # doctest: +SKIP
    PosixPath('outputs/report.html')
    """
    cfg = DemoConfig.quick() if quick else DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(seed)
    model, untrained = demo_models(seed, backend)
    hooks = [f"blocks.{l}.hook_resid_post" for l in range(model.num_layers)]
    report = Report("mstools — the method on the testbed")
    flags = (" --quick" if quick else "") + (f" --backend {backend}" if backend != "audiocraft" else "")

    _log(f"caching {cfg.clips} procedural clips x {len(hooks)} layers (trained and untrained), "
         f"read with their prompts and with the null text")
    source = testbed_clips(cfg.clips, seconds=cfg.seconds, seed=seed)
    stores = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        where = out / "stores" / f"{'quick' if quick else 'full'}_{backend}_{name}"
        stores[name] = cache_activations(m, source, where, hooks, Pooling("mean"), batch_size=32,
                                         branches=("cond", "uncond"), progress=False)
    every = {name: {h: s.features(h) for h in hooks} for name, s in stores.items()}   # read each hook once
    features, labels_of = {}, {}
    for text, branch in TEXTS.items():
        rows = (stores["trained"].labels["branch"] == branch).to_numpy()
        labels_of[text] = stores["trained"].labels[rows].reset_index(drop=True)
        index = torch.tensor(rows)
        features[text] = {name: {h: X[index] for h, X in by_hook.items()} for name, by_hook in every.items()}
    labels = labels_of["prompt"]

    _log("fitting probes for every layer with controls")
    sweeps, summaries = [], []
    for text in TEXTS:
        sw = probes.probe_sweep(features[text], labels_of[text], targets=list(FACTORS),
                                methods=("logistic", "ridge"), seeds=cfg.probe_seeds, controls=("shuffled",))
        sweeps.append(sw.assign(text=text))
        summaries.append(probes.summarize(sw).assign(text=text))
    sweep, probe_summary = pd.concat(sweeps, ignore_index=True), pd.concat(summaries, ignore_index=True)
    genre = probe_summary.query("text == 'prompt' and control == 'none' and model == 'trained' "
                                "and method == 'logistic' and target == 'genre'").sort_values("layer")
    # steer where genre first becomes readable (the earliest layer within 0.05 of the best probe)
    top = float(genre["accuracy_mean"].max())
    genre_hook = str(genre[genre["accuracy_mean"] >= top - 0.05].iloc[0]["hook"])

    _log(f"genre directions at {genre_hook}")
    X, g = features["prompt"]["trained"][genre_hook], labels["genre"].to_numpy()
    dm = {c: diff_means(X, g, c, hook=genre_hook, target="genre") for c in GENRES}
    fitted = {m: probes.fit_probes({genre_hook: X}, labels, "genre", m)[genre_hook]
              for m in ("logistic", "ridge")}
    dirs = {"diff_means": dm, **{m: {c: from_probe(p, c) for c in GENRES} for m, p in fitted.items()}}

    _log("steering, measured with the instrument")
    trials = [evaluation.Trial(f"{m} -> {c}, a={a}",
                               Steering(SteeringVector.from_directions(d, model.fingerprint), a,
                                        schedule=schedules.window(0.0, 2.0), branch="both"),
                               {"genre": c})
              for m, ds in dirs.items() for c, d in ds.items() for a in cfg.strengths]
    table = evaluation.steering(model, trials, [None] * cfg.steer_prompts, seeds=cfg.steer_seeds,
                                duration=cfg.seconds, random_draws=cfg.random_draws)
    steer_summary = evaluation.summarize(table)
    steer_summary.insert(1, "method", steer_summary["trial"].str.split(" ->").str[0])
    steer_summary.insert(2, "target", [t.target["genre"] for t in trials])

    # the report --------------------------------------------------------------------------------
    report.heading("What this run shows")
    for line in reading(probe_summary, steer_summary, genre_hook):
        report.text(line)
    report.text(f"{model}. Every number in this report was measured by `python -m mstools "
                f"demo{flags}` in this run.", note=True)
    report.heading("1. Which layers know what? Probes with controls")
    report.text("Held-out accuracy of linear probes per layer (split by clip, several seeds, 95 % "
                "interval). Dashed: the same probe on an untrained model of the same shape; dotted: "
                "shuffled labels. A probe found something real where the solid line clears both. "
                "Clips are read twice: with their training-style prompts (which name the genre in "
                "most clips, so even random weights can pass the word on) and with the null text "
                "(only the audio tells the factor).")
    for text in TEXTS:
        for t in FACTORS:
            report.figure(plots.layer_curve(sweep[sweep.text == text], "accuracy", target=t,
                                            method="logistic",
                                            title=f"{t}: logistic probe accuracy per layer ({text} text)"))
    best = (probe_summary.query("control == 'none' and model == 'trained' and method == 'logistic'")
            .sort_values("accuracy_mean", ascending=False).groupby(["text", "target"]).head(1))
    report.table(best[["text", "target", "hook", "accuracy_mean", "accuracy_lo", "accuracy_hi"]])
    report.heading("2. Genre directions")
    report.text(f"Directions at `{genre_hook}`: difference of class means, logistic and ridge probe "
                f"weights (ridge penalty chosen by cross-validation: alpha "
                f"{fitted['ridge'].meta['alpha']:.3g}). Cosine similarity between them:")
    flat = {f"{m}:{c}": d for m, ds in dirs.items() for c, d in ds.items()}
    report.figure(plots.similarity_heatmap(cosine_matrix(flat), title="cosine similarity"))
    p2 = pca(X, 2)
    arrows = direction_arrows(p2, {c: d.vector for c, d in dm.items()})
    report.figure(plots.projection_scatter(p2.transform(X), g, arrows,
                                           title=f"PCA of {genre_hook}, arrows: difference of means"))
    if cfg.umap:
        u = umap_embed(X, seed=seed)
        report.figure(plots.projection_scatter(u.embedding, g, direction_arrows(
            u, {c: d.vector for c, d in dm.items()}), title=f"UMAP of {genre_hook}"))
    report.heading("3. Steering toward a genre, measured against controls")
    report.text(f"Unconditional clips steered at `{genre_hook}` during the first 2 s, both CFG "
                f"branches; genre read by the procedural grammar. Each steered clip is paired with "
                f"its unsteered twin (same seed, same random numbers): `base_rate` is how often the "
                f"twin already has the target genre, `moved` the difference. `random`: "
                f"{cfg.random_draws} random directions of the same norm (mean and range); `prompted`: "
                f"the genre asked for in text. `kept_*`: share of clips whose other factors equal "
                f"their twin's.")
    report.figure(plots.steering_bars(steer_summary, title="steering success per trial"))
    report.table(steer_summary.drop(columns=[c for c in ("source", "schedule", "operator", "units",
                                                         "hooks", "heads", "segment") if c in steer_summary]))

    best_trial = steer_summary.sort_values("success", ascending=False).iloc[0]["trial"]
    trial = next(t for t in trials if t.name == best_trial)
    plain = model.generate([None, None], cfg.seconds, seed=seed, noise_ids=[0, 1])
    with apply(trial.steering.vector, model, trial.steering.strength, schedule=trial.steering.schedule,
               branch="both"):
        steered = model.generate([None, None], cfg.seconds, seed=seed, noise_ids=[0, 1])
    clips = []
    for i in range(2):
        for tag, o in (("unsteered", plain), ("steered", steered)):
            path = write_wav(out / f"{tag}_{i}.wav", o.audio[i], o.sample_rate)
            clips.append((f"clip {i}, {tag} ({path.name})", o.audio[i], o.sample_rate))
    report.heading(f"4. Listen: {best_trial} (each steered clip beside its unsteered twin)")
    report.audio(clips)
    report.figure(spectrogram(steered.audio[0], steered.sample_rate, title="steered clip 0", max_hz=4000))
    minutes = (time.time() - t_start) / 60
    report.text(f"Run time: {minutes:.1f} min on {torch.get_num_threads()} CPU threads.", note=True)
    results = {"backend": backend, "quick": quick, "genre_hook": genre_hook, "minutes": minutes,
               "reading": reading(probe_summary, steer_summary, genre_hook),
               "probes": probe_summary.to_dict(orient="records"),
               "steering": steer_summary.to_dict(orient="records")}
    atomic_write_json(out / "results.json", json.loads(json.dumps(results, default=str)))
    sweep.to_csv(out / "probes.csv", index=False)
    table.to_csv(out / "steering.csv", index=False)
    path = report.write(out / "report.html")
    _log(f"report: {path.resolve()}")
    _log(f"wav files and tables: {out.resolve()}")
    return path


def configure(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m mstools demo``."""
    p.add_argument("--out", default="outputs", help="folder for report.html, wavs, tables")
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="audiocraft",
                   help="MusicGen implementation the testbed runs on (default: audiocraft)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    """``python -m mstools demo``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.out, quick=args.quick, seed=args.seed, backend=args.backend)
    return 0
