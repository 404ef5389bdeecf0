"""The main job: the whole method on the testbed, end to end, into one HTML report.

    python -m mstools demo [--out outputs] [--quick] [--backend audiocraft|transformers]

``--backend`` picks the implementation the testbed runs on (audiocraft: Meta's reference code, the
default; transformers: Hugging Face's MusicGen holding the same weights). Hook names, activations
and the report's sections are the same on both.

1. cache mean-pooled residual activations of procedural clips (known labels) for the trained testbed
   and an untrained model of the same shape, into activation stores;
2. fit probes for every layer (logistic and ridge), with shuffled-label and untrained-model controls,
   for genre, tempo, instrument and dynamics; plot layer curves;
3. make genre directions (difference of means, probe weights), compare them (cosine), project the
   activations (PCA, UMAP) with the directions drawn in;
4. steer generation with those directions and evaluate against controls with the grammar scorer;
5. write ``report.html`` (figures, tables, audio players) and the wav files to ``--out``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from .hook_registry import BACKENDS

__all__ = ["run_demo", "demo_models", "DemoConfig"]


@dataclasses.dataclass
class DemoConfig:
    clips: int = 384
    seconds: float = 6.0
    probe_seeds: tuple[int, ...] = (0, 1, 2)
    steer_prompts: int = 16
    steer_seeds: tuple[int, ...] = (0, 1)
    strengths: tuple[float, ...] = (0.5, 0.75)
    umap: bool = True

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(clips=96, seconds=4.0, probe_seeds=(0, 1), steer_prompts=4, steer_seeds=(0,),
                   strengths=(0.5,), umap=True)


def _log(msg: str) -> None:
    print(f"[mstools demo] {msg}", flush=True)


def _vector(direction: Any, model: Any) -> Any:
    from .steering import SteeringVector
    return SteeringVector({direction.hook: direction.vector}, model.fingerprint,
                          source=f"{direction.method}:{direction.label}@{direction.hook}", units="unit")


def demo_models(seed: int = 0, backend: str = "audiocraft") -> tuple[Any, Any]:
    """The trained testbed and an untrained model of the same shape, both on ``backend``.

    >>> model, untrained = demo_models(0, "transformers")
    >>> model.backend_name, untrained.backend_name
    ('transformers', 'transformers')
    """
    import mstools
    from .lessons import untrained_testbed
    model = mstools.load_musicgen("testbed", device="cpu", backend=backend)
    return model, untrained_testbed(seed, backend)


def run_demo(out: str | Path = "outputs", quick: bool = False, seed: int = 0,
             backend: str = "audiocraft") -> Path:
    """Run the pipeline on the testbed (on ``backend``) and write ``out/report.html``; returns its path.

    >>> run_demo("outputs", quick=True, backend="transformers")       # doctest: +SKIP
    PosixPath('outputs/report.html')
    """
    from . import evaluate, plots, probes
    from .audio import spectrogram, write_wav
    from .caching import cache_activations
    from .directions import cosine_matrix, diff_means, from_probe
    from .pooling import Pooling
    from .projections import direction_arrows, pca, umap_embed
    from .report import Report
    from .sources import testbed_clips
    from .steering import Steering, schedules
    from .testbed import FACTORS, GENRES

    cfg = DemoConfig.quick() if quick else DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(seed)
    model, untrained = demo_models(seed, backend)
    hooks = [f"blocks.{l}.hook_resid_post" for l in range(model.num_layers)]
    report = Report("mstools — the method on the testbed")
    flags = (" --quick" if quick else "") + (f" --backend {backend}" if backend != "audiocraft" else "")
    report.text(f"{model}. Every number below was measured by `python -m mstools demo{flags}` in "
                "this run.")

    # 1. cache --------------------------------------------------------------------------------
    _log(f"caching {cfg.clips} procedural clips x {len(hooks)} layers (trained and untrained)")
    source = testbed_clips(cfg.clips, seconds=cfg.seconds, seed=seed)
    stores = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        where = out / "stores" / f"{'quick' if quick else 'full'}_{backend}_{name}"
        stores[name] = cache_activations(m, source, where, hooks, Pooling("mean"),
                                         batch_size=32, progress=False)
    labels = stores["trained"].labels
    features = {name: {h: s.features(h) for h in hooks} for name, s in stores.items()}

    # 2. probes -------------------------------------------------------------------------------
    _log("fitting probes for every layer with controls")
    targets = list(FACTORS)
    sweep = probes.probe_sweep(features, labels, targets=targets, methods=("logistic", "ridge"),
                               seeds=cfg.probe_seeds, controls=("shuffled",))
    summary = probes.summarize(sweep)
    report.heading("1. Which layers know what? Probes with controls")
    report.text("Held-out accuracy of linear probes per layer (clips split by clip, several seeds, 95 % "
                "interval). Dashed: the same probe on an untrained model of the same shape; dotted: "
                "shuffled labels. A probe found something real where the solid line clears both.")
    for t in targets:
        report.figure(plots.layer_curve(sweep, "accuracy", target=t, method="logistic",
                                        title=f"{t}: logistic probe accuracy per layer"))
    best = (summary.query("control == 'none' and model == 'trained' and method == 'logistic'")
            .sort_values("accuracy_mean", ascending=False).groupby("target").head(1))
    report.table(best[["target", "hook", "accuracy_mean", "accuracy_lo", "accuracy_hi"]]
                 if "accuracy_lo" in best else best)
    # steer where genre first becomes linearly readable (the earliest layer within 0.05 of the best
    # probe): later layers read it as well but steer worse (see mstools/testbed/findings.md)
    genre_rows = summary.query("control == 'none' and model == 'trained' and method == 'logistic' "
                               "and target == 'genre'").sort_values("layer")
    top = float(genre_rows["accuracy_mean"].max())
    genre_hook = str(genre_rows[genre_rows["accuracy_mean"] >= top - 0.05].iloc[0]["hook"])

    # 3. directions ---------------------------------------------------------------------------
    _log(f"genre directions at {genre_hook}")
    X = features["trained"][genre_hook]
    g = labels["genre"].to_numpy()
    dm = {c: diff_means(X, g, c, hook=genre_hook, target="genre") for c in GENRES}
    fitted = {m: probes.fit_probes({genre_hook: X}, labels, "genre", m)[genre_hook]
              for m in ("logistic", "ridge")}
    dirs = dict(dm)
    for m, p in fitted.items():
        for c in GENRES:
            dirs[f"{m}:{c}"] = from_probe(p, c)
    report.heading("2. Genre directions")
    report.text(f"Directions at `{genre_hook}`: difference of class means, logistic and ridge "
                "probe weights. Cosine similarity between them:")
    report.figure(plots.similarity_heatmap(cosine_matrix(dirs), title="cosine similarity"))
    p2 = pca(X, 2)
    arrows = direction_arrows(p2, {c: d.vector for c, d in dm.items()})
    report.figure(plots.projection_scatter(p2.transform(X), g, arrows,
                                           title=f"PCA of {genre_hook}, arrows: diff-of-means"))
    if cfg.umap:
        u = umap_embed(X, seed=seed)
        report.figure(plots.projection_scatter(u.embedding, g, direction_arrows(
            u, {c: d.vector for c, d in dm.items()}), title=f"UMAP of {genre_hook}"))

    # 4. steering -----------------------------------------------------------------------------
    _log("steering evaluation")
    prompts = [None] * cfg.steer_prompts
    pulse = schedules.window(0.0, 2.0)
    trials = []
    for target in GENRES:
        for method, d in (("diff_means", dm[target]), ("ridge", from_probe(fitted["ridge"], target)),
                          ("logistic", from_probe(fitted["logistic"], target))):
            for a in cfg.strengths:
                trials.append(evaluate.Trial(f"{method} -> {target}, a={a}",
                                             Steering(_vector(d, model), a, schedule=pulse,
                                                      branch="both"), {"genre": target}))
    table = evaluate.steering(model, trials, prompts, seeds=cfg.steer_seeds, duration=cfg.seconds)
    steer_summary = evaluate.summarize(table)
    report.heading("3. Steering toward a genre, with controls")
    report.text(f"Unconditional clips steered at `{genre_hook}` during the first 2 s (a pulse: the "
                "model then carries the genre in its context), on both CFG branches; genre read by "
                "the procedural grammar. `random`: a random direction of the same norm; `prompted`: "
                "the target genre asked for in the prompt; `unsteered`: about a quarter of "
                "unconditional clips already have any given genre.")
    by_method = steer_summary.copy()
    by_method["method"] = by_method["trial"].str.split(" ->").str[0]
    by_method["strength"] = by_method["trial"].str.extract(r"a=([0-9.]+)")[0]
    agg = (by_method[by_method.control.isin(["none", "random"])]
           .groupby(["method", "strength", "control"], as_index=False)
           .agg(success=("success", "mean"), loglik=("loglik", "mean"), n=("n", "sum")))
    report.text("Averaged over the four target genres:")
    report.table(agg)
    report.figure(plots.steering_curve(agg, x="strength", by="method",
                                       title="genre steering: success (solid; dashed = random "
                                             "direction) and grammar loglik (dotted) vs strength"))
    report.text("Per target genre:")
    report.table(steer_summary)

    # 5. audio --------------------------------------------------------------------------------
    best_trial = (steer_summary.query("control == 'none'").sort_values("success", ascending=False)
                  .iloc[0]["trial"])
    trial = next(t for t in trials if t.name == best_trial)
    plain = model.generate(prompts[:2], cfg.seconds, seed=seed)
    from .steering import apply
    with apply(trial.steering.vector, model, trial.steering.strength,
               schedule=trial.steering.schedule, branch="both"):
        steered = model.generate(prompts[:2], cfg.seconds, seed=seed)
    clips = []
    for i, p in enumerate(prompts[:2]):
        for tag, o in (("unsteered", plain), ("steered", steered)):
            path = write_wav(out / f"{tag}_{i}.wav", o.audio[i], o.sample_rate)
            clips.append((f"clip {i} — {tag} ({path.name})", o.audio[i], o.sample_rate))
    report.heading(f"4. Listen: {best_trial}")
    report.audio(clips)
    report.figure(spectrogram(steered.audio[0], steered.sample_rate, title="steered clip",
                              max_hz=4000))
    minutes = (time.time() - t_start) / 60
    report.text(f"Run time: {minutes:.1f} min on {torch.get_num_threads()} CPU threads.", note=True)
    results = {"backend": backend, "probes_best": best.to_dict(orient="records"),
               "steering": steer_summary.to_dict(orient="records"), "minutes": minutes}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    sweep.to_csv(out / "probes.csv", index=False)
    table.to_csv(out / "steering.csv", index=False)
    path = report.write(out / "report.html")
    _log(f"report: {path.resolve()}")
    _log(f"wav files and tables: {out.resolve()}")
    return path


def _configure(p: Any) -> None:
    p.add_argument("--out", default="outputs", help="folder for report.html, wavs, tables")
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="audiocraft",
                   help="MusicGen implementation the testbed runs on (default: audiocraft)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def _run(args: Any) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.out, quick=args.quick, seed=args.seed, backend=args.backend)
    return 0


from .cli import command  # noqa: E402  (registers the subcommand)

command("demo", "run the whole method on the testbed and write an HTML report", _configure)(_run)
