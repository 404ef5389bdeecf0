"""Where genre is decided (activation patching) and which features carry it (sparse autoencoder).

    python experiments/patching_sae.py [--quick] [--out DIR] [--no-write]

Composed from the library calls of notebooks 08 and 09, nothing else:

``patching`` (notebook 08). Clips of genre ``CLEAN`` read with the prompt ``CLEAN`` (clean run) and
with ``CORRUPT`` (corrupted run); :func:`mstools.analysis.patching.patch_sweep` copies the clean
residual stream (``blocks.{l}.hook_resid_post``) into the corrupted run for the whole clip, per
``WINDOW``-second window, and the cross-attention output (where the text enters each layer) for the
whole clip. Teacher-forced metric: the clean codes' mean log-probability per token, 0 = corrupted
run, 1 = clean run. Generative metric (:func:`~mstools.analysis.patching.generative_sweep`): the
first ``FIRST`` seconds of one layer's residual stream copied during generation, the genre read by
the grammar from there on, 0 = as often ``CLEAN`` as the corrupted run, 1 = as the clean run. The
whole-clip sweep is repeated for every genre pair of :data:`PAIRS`. Beside them, as in the notebook:
logistic probe accuracy per layer (mean-pooled, split by clip) and the success of steering with a
difference-of-means direction per layer.

``features`` (notebook 09). Per-frame ``resid_post`` of layer :data:`LAYER` (the notebook's layer)
cached for the trained testbed and for the untrained model of the same shape; a TopK SAE
(:func:`mstools.analysis.sae.train_sae`) trained on the first 80 % of the clips of each; on the
held-out clips: FVU, L0, dead latents, the splice cost (grammar log-likelihood of clips generated
with the layer replaced by the SAE's reconstruction), the best single latent's clip-level AUROC per
factor value and the number of latents a sparse probe needs for 0.95 balanced accuracy. Steering
(:mod:`mstools.evaluation`: unsteered twins, 8 random directions of equal norm, the prompt as
reference) with the best genre latent's decoder direction beside the logistic probe's direction.

Writes ``patching_sae.json`` to ``--out`` (rendered into the README by ``readme_figures.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

import mstools
from mstools import evaluation
from mstools.analysis import directions as dirs, probes
from mstools.analysis import sae as saes
from mstools.analysis.patching import Patch, generative_sweep, layer_time_patches, patch_sweep
from mstools.core.fileio import atomic_write_text
from mstools.data.caching import cache_activations
from mstools.data.labelled import labelled_features
from mstools.data.sources import testbed_clips
from mstools.steering import Steering, SteeringVector
from mstools.testbed import FACTORS, GENRES, make_dataset, score

HERE = Path(__file__).resolve().parent
CLEAN, CORRUPT = "jazz", "rock"          # notebook 08's pair
#: (clean, corrupted) genre pairs of the whole-clip sweep: each genre against the one that differs
#: in scale, drum kit and order cue.
PAIRS = (("jazz", "rock"), ("rock", "jazz"), ("classical", "electronic"), ("electronic", "classical"))
WINDOW = 0.5                              # seconds per time window (notebook 08)
FIRST = 2.0                               # seconds copied in the generative sweep (notebook 08)
LAYER = 3                                 # the SAE's layer (notebook 09)
LEVEL = 0.5                               # "carries it": restores at least this share of the gap
ACCURACY = 0.95                           # sparse probe level (saes.features_needed)
KS = (1, 2, 4, 8, 16, 32, 64, 128)        # sparse probe sizes (notebook 09)


@dataclasses.dataclass
class Config:
    patch_clips: int        # clips patched at once (teacher forced)
    gen_clips: int          # prompts per block in the generative sweep
    probe_clips: int        # clips for the probe accuracy per layer
    steer_prompts: int      # prompts per steering trial
    sae_clips: int          # clips of 6 s cached per model for the SAE
    width: int = 384        # SAE latents
    k: int = 16             # active latents per frame
    epochs: int = 2
    splice_prompts: int = 4 # per genre, for the splice cost
    direction_clips: int = 512
    targets: tuple[str, ...] = GENRES
    draws: int = 8

    @classmethod
    def make(cls, quick: bool) -> "Config":
        if quick:
            return cls(8, 4, 128, 4, 200, splice_prompts=1, direction_clips=128, targets=(CLEAN,))
        return cls(32, 32, 512, 32, 2000)


# ------------------------------------------------------------------------------------- patching
def genre_clips(model: Any, genre: str, n: int) -> torch.Tensor:
    """Codes ``[n, K, 60]`` of procedural clips of ``genre`` (notebook 08's draw)."""
    clips = [c for c in make_dataset(8 * n, 60, seed=3) if c.labels["genre"] == genre][:n]
    return torch.stack([c.codes for c in clips])


def whole_layer_sweep(model: Any, codes: torch.Tensor, clean: str, corrupt: str) -> pd.DataFrame:
    """Notebook 08, section 3: ``resid_post`` and ``cross_attn_out`` of each layer, whole clip;
    adds a ``kind`` column."""
    whole = patch_sweep(model, codes, clean_prompts=clean, corrupted_prompts=corrupt,
                        patches=[Patch(f"blocks.{l}.{h}") for h in ("hook_resid_post", "hook_cross_attn_out")
                                 for l in range(model.num_layers)])
    whole["kind"] = whole["hook"].str.split(".").str[-1]
    return whole


def earliest(values: Sequence[float], level: float = LEVEL) -> int | None:
    """First index whose value reaches ``level`` (None if none does)."""
    return next((i for i, v in enumerate(values) if v is not None and v >= level), None)


def patching(model: Any, cfg: Config, store_dir: str, log: Callable[[str], None] = print) -> dict:
    """Notebook 08 at ``cfg``'s size; one record per layer plus the layer x time grid."""
    t0 = time.monotonic()
    codes = genre_clips(model, CLEAN, cfg.patch_clips)
    duration = (codes.shape[-1] + model.num_codebooks - 1) / model.frame_rate   # seconds of LM steps
    grid = patch_sweep(model, codes, patches=layer_time_patches(model, window=WINDOW, duration=duration),
                       clean_prompts=CLEAN, corrupted_prompts=CORRUPT)
    whole = whole_layer_sweep(model, codes, CLEAN, CORRUPT)
    table = whole.pivot_table(index="layer", columns="kind", values="metric")
    log(f"[{time.monotonic() - t0:5.0f} s] teacher-forced sweeps")
    pairs = []
    for clean, corrupt in PAIRS:
        if (clean, corrupt) == (CLEAN, CORRUPT):
            t = table
        else:
            t = whole_layer_sweep(model, genre_clips(model, clean, cfg.patch_clips), clean, corrupt
                                  ).pivot_table(index="layer", columns="kind", values="metric")
        resid = [float(v) for v in t["hook_resid_post"]]
        pairs.append(dict(clean=clean, corrupted=corrupt, resid_post=resid,
                          cross_attn_out=[float(v) for v in t["hook_cross_attn_out"]],
                          earliest_layer=earliest(resid)))
    log(f"[{time.monotonic() - t0:5.0f} s] genre pairs")
    m = cfg.gen_clips
    gen = generative_sweep(model, [CLEAN] * m, [CORRUPT] * m, duration=6.0, factor="genre", target=CLEAN,
                           patches=[Patch(f"blocks.{l}.hook_resid_post", 0.0, FIRST)
                                    for l in range(model.num_layers)]).set_index("layer")
    log(f"[{time.monotonic() - t0:5.0f} s] generative sweep")
    # beside: probe accuracy and steering success per layer (notebook 08, section 6)
    hooks = model.check_names("blocks.*.hook_resid_post")
    store = cache_activations(model, testbed_clips(cfg.probe_clips, 6.0, seed=0),
                              f"{store_dir}/{cfg.probe_clips}x6s_resid_mean", hooks, "mean",
                              batch_size=64, progress=False)
    probe_summary = probes.summarize(probes.probe_sweep(store, store.labels, ["genre"], ("logistic",),
                                                        seeds=(0,), controls=()))
    acc = probe_summary.set_index("layer")["accuracy_mean"]
    best_probe_layer = int(probe_summary.set_index("hook").loc[probes.best_hook(probe_summary, "genre"), "layer"])
    made = dirs.recipes({h: store.features(h) for h in hooks}, store.labels, "genre", methods=("diff_means",),
                        classes=[CLEAN])
    trials = [evaluation.Trial(d.hook, Steering(SteeringVector.from_directions(d, model.fingerprint), 0.5,
                                                branch="both"), {"genre": CLEAN}) for d in made]
    steer = evaluation.summarize(evaluation.steering(model, trials, [None] * cfg.steer_prompts, seeds=[0],
                                                     controls=("unsteered",))).set_index("trial")
    log(f"[{time.monotonic() - t0:5.0f} s] probes and steering per layer")

    layers = []
    for l in range(model.num_layers):
        g = grid[grid["layer"] == l]
        later = g[g["t0"] >= WINDOW - 1e-9]["metric"]
        layers.append(dict(
            layer=l, resid_post=float(table.loc[l, "hook_resid_post"]),
            cross_attn_out=float(table.loc[l, "hook_cross_attn_out"]),
            first_window=float(g[g["t0"] < WINDOW - 1e-9]["metric"].sum()),
            later_max=float(later.max()) if len(later) else None,
            generative=float(gen.loc[l, "metric"]), generative_hit=float(gen.loc[l, "hit"]),
            probe_accuracy=float(acc.loc[l]), steering_success=float(steer.loc[hooks[l], "success"])))
    top = grid.loc[grid["metric"].idxmax()]
    resid = [r["resid_post"] for r in layers]
    first = earliest(resid)
    return dict(
        clean=CLEAN, corrupted=CORRUPT, clips=int(codes.shape[0]), window=WINDOW, duration=duration,
        logprob_clean=float(whole["logprob_clean"].iloc[0]),
        logprob_corrupted=float(whole["logprob_corrupted"].iloc[0]),
        level=LEVEL, layers=layers, pairs=pairs,
        grid=grid[["layer", "t0", "t1", "metric"]].to_dict("records"),
        generative=dict(first=FIRST, clips=m, hit_clean=float(gen["hit_clean"].iloc[0]),
                        hit_corrupted=float(gen["hit_corrupted"].iloc[0])),
        probe_clips=cfg.probe_clips, steer_prompts=cfg.steer_prompts,
        steering_base_rate=float(steer["base_rate"].mean()),
        finding=dict(
            earliest_layer=first,
            earliest_layer_generative=earliest([r["generative"] for r in layers]),
            first_window_share=(layers[first]["first_window"] / layers[first]["resid_post"]
                                if first is not None else None),
            top_window=dict(layer=int(top["layer"]), t0=float(top["t0"]), t1=float(top["t1"]),
                            metric=float(top["metric"])),
            cross_attn_sum=float(table["hook_cross_attn_out"].sum()),
            best_cross_attn_layer=int(table["hook_cross_attn_out"].idxmax()),
            best_probe_layer=best_probe_layer,
            best_steering_layer=int(max(range(len(layers)), key=lambda i: layers[i]["steering_success"])),
        ),
        seconds=time.monotonic() - t0)


# ------------------------------------------------------------------------------------- features
def splice_cost(model: Any, sae: saes.SAE, prompts: list[str]) -> dict:
    """Notebook 09, section 2: grammar log-likelihood of clips generated unchanged, with the SAE
    spliced in and with the layer's output replaced by its mean."""
    mean_hooks = [(sae.hook, lambda x, hook: sae.mean.expand_as(x).to(x.dtype))]
    runs = {"unchanged": [], "spliced": saes.splice(sae), "mean_ablation": mean_hooks}
    ll = {k: score(model.generate(prompts, 6.0, seed=0, fwd_hooks=h, decode=False).codes) for k, h in runs.items()}
    out = {f"loglik_{k}": float(v["loglik"].mean()) for k, v in ll.items()}
    out.update({f"genre_as_prompted_{k}": float((v["genre"].values == prompts).mean()) for k, v in ll.items()})
    out["splice_cost"] = out["loglik_unchanged"] - out["loglik_spliced"]
    out["mean_ablation_cost"] = out["loglik_unchanged"] - out["loglik_mean_ablation"]
    return out


def train_saes(models: dict[str, Any], cfg: Config, store_dir: str) -> tuple[dict, dict, pd.DataFrame, int]:
    """Notebook 09, section 1: per-frame stores and one SAE per model; returns ``(saes, held-out
    activations, held-out labels, training rows)``."""
    hook = f"blocks.{LAYER}.hook_resid_post"
    stores = {name: cache_activations(m, testbed_clips(cfg.sae_clips, 6.0, seed=0),
                                      f"{store_dir}/{name}_{cfg.sae_clips}x6s_L{LAYER}_frames",
                                      hook, "frame", batch_size=32, progress=False)
              for name, m in models.items()}
    rows = stores["trained"].labels
    n_train = int(0.8 * rows["clip"].nunique()) * 60
    trained = {name: saes.train_sae(saes.StoreBatches(store, hook, limit=n_train), hook=hook,
                                    fingerprint=store.fingerprint, width=cfg.width, k=cfg.k,
                                    epochs=cfg.epochs, seed=0)[0]
               for name, store in stores.items()}
    held = {name: s.features(hook)[n_train:] for name, s in stores.items()}
    labels = rows.iloc[n_train:].reset_index(drop=True)
    return trained, held, labels, n_train


def _num(x: float) -> float | None:
    """JSON-safe number: inf / NaN -> None."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def features(models: dict[str, Any], cfg: Config, store_dir: str, log: Callable[[str], None] = print) -> dict:
    """Notebook 09 at ``cfg``'s size, for ``models = {"trained": ..., "untrained": ...}``."""
    t0 = time.monotonic()
    hook = f"blocks.{LAYER}.hook_resid_post"
    trained, held, labels, n_train = train_saes(models, cfg, store_dir)
    log(f"[{time.monotonic() - t0:5.0f} s] stores and SAEs")
    prompts = list(GENRES) * cfg.splice_prompts
    quality = {}
    for name in models:
        q = saes.evaluate_sae(trained[name], held[name])
        quality[name] = dict(fvu=1 - q["fve"], fve=q["fve"], l0=q["l0"], dead=int(q["dead"]),
                             dead_frac=q["dead_frac"], **splice_cost(models[name], trained[name], prompts))
    log(f"[{time.monotonic() - t0:5.0f} s] quality and splice")
    # notebook 09, section 3: the best latent per factor value (clip level), sparse probes
    codes = {name: saes.encode(trained[name], held[name]) for name in models}
    pooled = {name: saes.pool_by_clip(c, labels) for name, c in codes.items()}
    factors = list(FACTORS)
    best = pd.concat({name: saes.best_features(saes.feature_auroc(*pooled[name], factors)).set_index(["factor", "value"])
                      for name in models}, axis=1)
    frame = pd.concat({name: saes.best_features(saes.feature_auroc(codes[name], labels, factors))
                       .set_index(["factor", "value"])["auroc"] for name in models}, axis=1)
    curves = pd.concat([saes.sparse_probe(*pooled[name], f, v, ks=KS).assign(model=name)
                        for name in models for f in factors for v in sorted(pooled[name][1][f].unique())])
    needed = curves.groupby(["factor", "value", "model"]).apply(saes.features_needed, level=ACCURACY).unstack("model")
    rows = []
    for (f, v) in best.index:
        row = dict(factor=f, value=v)
        for name in models:
            row[f"{name}_feature"] = int(best.loc[(f, v), (name, "feature")])
            row[f"{name}_auroc"] = float(best.loc[(f, v), (name, "auroc")])
            row[f"{name}_frame_auroc"] = float(frame.loc[(f, v), name])
            row[f"{name}_needed"] = _num(needed.loc[(f, v), name])
        rows.append(row)
    log(f"[{time.monotonic() - t0:5.0f} s] feature scores and sparse probes")
    # notebook 09, section 5: steer with the best genre latent beside the logistic probe direction
    model, sae = models["trained"], trained["trained"]
    X, lab = labelled_features(model, testbed_clips(cfg.direction_clips, 6.0, seed=101), [hook])
    probe_dirs = dirs.recipes(X, lab, "genre", methods=("logistic",), classes=list(cfg.targets))
    trials, info = [], {}
    for target in cfg.targets:
        feature = int(best.loc[("genre", target), ("trained", "feature")])
        vectors = {f"SAE latent {feature} -> {target}":
                   SteeringVector.from_directions(sae.feature_direction(feature), model.fingerprint),
                   f"logistic probe -> {target}": SteeringVector.from_directions(dirs.select(probe_dirs, label=target),
                                                                               model.fingerprint)}
        cos = float(vectors[f"SAE latent {feature} -> {target}"][hook] @ vectors[f"logistic probe -> {target}"][hook])
        for name, v in vectors.items():
            trials.append(evaluation.Trial(name, Steering(v, 0.5, branch="both"), {"genre": target}))
            info[name] = dict(target=target, direction="SAE latent" if name.startswith("SAE") else "logistic probe",
                              feature=feature, cosine=cos)
    steer = evaluation.summarize(evaluation.steering(model, trials, [None] * cfg.steer_prompts, seeds=[0],
                                                     random_draws=cfg.draws))
    steering = [dict(**info[r["trial"]], **{c: _num(r[c]) for c in
                     ("success", "success_lo", "success_hi", "base_rate", "random_mean", "random_max",
                      "prompted", "ll_drop", "ll_drop_prompted") if c in r})
                for _, r in steer.iterrows()]
    log(f"[{time.monotonic() - t0:5.0f} s] steering")
    return dict(layer=LAYER, hook=hook, width=cfg.width, k=cfg.k, epochs=cfg.epochs, clips=cfg.sae_clips,
                train_rows=n_train, heldout_clips=int(labels["clip"].nunique()), level=ACCURACY,
                max_k=max(KS), splice_prompts=len(prompts), models=quality, factors=rows,
                steer_prompts=cfg.steer_prompts, draws=cfg.draws, steering=steering,
                seconds=time.monotonic() - t0)


# ------------------------------------------------------------------------------------------ run
def run_all(model: Any, untrained: Any, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Both parts at the ``quick`` or full size; the dict written to ``patching_sae.json``."""
    torch.manual_seed(0)
    cfg = Config.make(quick)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mstools-stores-") as stores:
        out = dict(model=model.model_name, backend=model.backend_name, quick=quick,
                   config=dataclasses.asdict(cfg),
                   patching=patching(model, cfg, stores, log),
                   features=features({"trained": model, "untrained": untrained}, cfg, stores, log))
    out["seconds"] = time.monotonic() - t0
    out["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few clips, one steering target")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for patching_sae.json")
    p.add_argument("--no-write", action="store_true", help="print the results only")
    p.add_argument("--backend", default="audiocraft", choices=("audiocraft", "transformers"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = mstools.load_musicgen("testbed", backend=args.backend)
    untrained = mstools.load_musicgen("testbed-untrained", backend=args.backend, seed=0)
    result = run_all(model, untrained, quick=args.quick)
    text = json.dumps(result, indent=1)
    if args.no_write:
        print(text)
    else:
        path = Path(args.out) / "patching_sae.json"
        atomic_write_text(path, text + "\n")
        print(f"wrote {path} ({result['seconds'] / 60:.1f} min)")
    return result


if __name__ == "__main__":
    main()
