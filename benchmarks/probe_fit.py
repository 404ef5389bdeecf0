"""Benchmark: fitting one probe per layer for every layer at once.

    python benchmarks/probe_fit.py [--quick] [--threads 1] [--repeats N] [--out PATH]

Data: synthetic activations with real structure, ``[L, N, D]`` = 24 x 2,000 x 1,024 ("pooled": one
row per clip) and 24 x 20,000 x 1,024 ("per-frame": 1,000 clips x 20 frames sharing a clip offset),
10 classes whose means live in a random 10-dim subspace with a layer-dependent strength (weak early,
strongest around layer 16), on top of a non-zero mean, anisotropic per-dimension noise with a few
large-variance dimensions, rank-16 shared noise and (per-frame) clip offsets. Split by clip (75/25),
features z-scored with train statistics (outside the timings, the same for every arm).

Arms (each fits all L layers; held-out accuracy is the mean over layers):
- ``ridge (ours)``: :func:`mstools.analysis.probes.fit_ridge` (batched Gram + float64 Cholesky), one-hot targets;
  alpha chosen from {1, 10, 100, 1000} on a validation split of the training clips (untimed).
- ``logistic (ours)``: :func:`mstools.analysis.probes.fit_logistic` (batched L-BFGS), C=1, tol=1e-4, max_iter=100,
  default preconditioner ("auto": per-feature scaling when N < 4 D, Gram whitening otherwise).
- ``seed recipe batched (ours)``: :func:`mstools.analysis.probes.fit_seed_recipe` (all layers in one Adam run).
- ``seed recipe as written``: per layer, ``nn.Linear(D, K, bias=False)`` on L2-normalised inputs, MSE
  onto ±1 targets, Adam lr 5e-3, batch 1024, 250 epochs (a DataLoader-free loop; no faster than theirs).
- ``sklearn loop``: per layer ``LogisticRegression(C=1, tol=1e-4, max_iter=100)`` (lbfgs; it keeps the
  float32 input as float32, as ours does).
- ``Gram floor``: only the centred Gram matrices of every layer, lower triangle (what the Cholesky reads;
  :func:`mstools.analysis.probes.centered_gram` with ``lower_only=True``).

Threads: every arm runs with the same thread count (default 1): ``torch.set_num_threads`` for torch and
``threadpoolctl.threadpool_limits`` for NumPy/SciPy BLAS and OpenMP (scikit-learn). Arms are
time-interleaved: after one untimed warm-up call per arm on a small slice, each repeat runs every arm
once, in an order rotated per repeat, and the median wall time is reported. Results go to
``benchmarks/results/probe_fit.json`` (``probe_fit_quick.json`` with ``--quick``) and a markdown table
on stdout. The machine's load average at start and end is recorded: on a shared CPU, re-take numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

# imported before threadpool_limits is entered, so that it limits their OpenMP/BLAS pools too (a
# library loaded inside the context keeps its default threads and oversubscribes a shared CPU)
import scipy.optimize  # noqa: F401,E402
import sklearn.linear_model  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS as RESULTS_DIR, machine  # noqa: E402
from mstools.analysis.probes import centered_gram, fit_logistic, fit_ridge, fit_seed_recipe, group_split  # noqa: E402


# ----------------------------------------------------------------------------------------------
def make_data(L: int, n_clips: int, frames: int, D: int, K: int, seed: int = 0):
    """Synthetic ``X [L, N, D]`` float32 (N = n_clips * frames), labels ``y [N]``, clip ids ``[N]``."""
    g = torch.Generator().manual_seed(seed)
    N = n_clips * frames
    clip_y = torch.randint(0, K, (n_clips,), generator=g)
    y = clip_y.repeat_interleave(frames)
    clips = torch.arange(n_clips).repeat_interleave(frames)
    basis = torch.linalg.qr(torch.randn(D, K, generator=g))[0].T  # [K, D] orthonormal
    scales = torch.exp(0.5 * torch.randn(D, generator=g))
    scales[torch.randperm(D, generator=g)[:4]] *= 20.0  # a few large-variance dimensions
    offset = 3.0 * torch.randn(D, generator=g)
    X = torch.empty(L, N, D)
    for l in range(L):
        strength = 0.15 + 0.5 * math.exp(-((l - 0.66 * L) / (0.3 * L)) ** 2)
        rot = torch.linalg.qr(torch.randn(K, K, generator=g))[0]
        means = strength * math.sqrt(D / K) * (rot @ basis) * scales.mean()  # [K, D]
        shared = torch.randn(N, 16, generator=g) @ torch.randn(16, D, generator=g) * 0.5
        clip_off = 0.0
        if frames > 1:
            clip_off = (torch.randn(n_clips, D, generator=g) * 0.5 * scales).repeat_interleave(frames, 0)
        X[l] = torch.randn(N, D, generator=g) * scales + shared + clip_off + means[y] + offset
    return X, y, clips


def prepare(X: torch.Tensor, y: torch.Tensor, clips: torch.Tensor, seed: int = 0):
    tr, te = group_split(clips.numpy(), y.numpy(), test_size=0.25, seed=seed)
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    Xtr, Xte = X.index_select(1, tr), X.index_select(1, te)
    mean = Xtr.mean(1, keepdim=True)
    std = Xtr.std(1, keepdim=True).clamp_min(1e-6)
    Xtr.sub_(mean).div_(std)
    Xte.sub_(mean).div_(std)
    return Xtr, Xte, y[tr], y[te], clips[tr]


def choose_alpha(Xtr, ytr, clips_tr, K, alphas=(1.0, 10.0, 100.0, 1000.0)) -> tuple[float, dict]:
    """Ridge alpha with the best mean accuracy on a validation split of the training clips (untimed)."""
    a, b = group_split(clips_tr.numpy(), ytr.numpy(), test_size=0.25, seed=1)
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    Xa, Xb = Xtr.index_select(1, a), Xtr.index_select(1, b)
    scores = {}
    for alpha in alphas:
        fit = fit_ridge(Xa, torch.nn.functional.one_hot(ytr[a], K).float(), alpha=alpha)
        scores[alpha] = held_out_accuracy(fit.scores(Xb), ytr[b])
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def held_out_accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    return float((scores.argmax(-1) == y).float().mean())


# ----------------------------------------------------------------------------------------------
def arm_ridge(Xtr, Xte, ytr, yte, K, cfg):
    fit = fit_ridge(Xtr, torch.nn.functional.one_hot(ytr, K).float(), alpha=cfg["alpha"])
    return held_out_accuracy(fit.scores(Xte), yte), {}


def arm_logistic(Xtr, Xte, ytr, yte, K, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = fit_logistic(Xtr, ytr, C=cfg["C"], n_classes=K, tol=cfg["tol"], max_iter=cfg["max_iter"])
    return held_out_accuracy(fit.scores(Xte), yte), {
        "iterations_mean": float(fit.info["n_iter"].float().mean()),
        "converged_layers": int(fit.info["converged"].sum()),
        "precondition": fit.info["precondition"],
    }


def arm_seed_batched(Xtr, Xte, ytr, yte, K, cfg):
    fit = fit_seed_recipe(Xtr, ytr, n_classes=K, epochs=cfg["epochs"])
    return held_out_accuracy(fit.scores(Xte), yte), {}


def arm_seed_as_written(Xtr, Xte, ytr, yte, K, cfg):
    """Per layer, as the seed code does it: nn.Linear without bias, Adam, MSE onto ±1, 250 epochs."""
    accs = []
    targets = torch.nn.functional.one_hot(ytr, K).float() * 2 - 1
    for l in range(Xtr.shape[0]):
        torch.manual_seed(l)
        x = Xtr[l] / Xtr[l].norm(dim=-1, keepdim=True)
        probe = torch.nn.Linear(x.shape[1], K, bias=False)
        opt = torch.optim.Adam(probe.parameters(), lr=5e-3)
        loss_fn = torch.nn.MSELoss()
        for _ in range(cfg["epochs"]):
            perm = torch.randperm(x.shape[0])
            for i in range(0, x.shape[0], 1024):
                idx = perm[i:i + 1024]
                opt.zero_grad()
                loss = loss_fn(probe(x[idx]), targets[idx])
                loss.backward()
                opt.step()
        with torch.no_grad():
            xt = Xte[l] / Xte[l].norm(dim=-1, keepdim=True)
            accs.append(held_out_accuracy(probe(xt), yte))
    return float(np.mean(accs)), {}


def arm_sklearn(Xtr, Xte, ytr, yte, K, cfg):
    LogisticRegression = sklearn.linear_model.LogisticRegression
    accs, iters = [], []
    ytr_np, yte_np = ytr.numpy(), yte.numpy()
    for l in range(Xtr.shape[0]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=cfg["C"], tol=cfg["tol"], max_iter=cfg["max_iter"])
            clf.fit(Xtr[l].numpy(), ytr_np)
        accs.append(float((clf.predict(Xte[l].numpy()) == yte_np).mean()))
        iters.append(int(clf.n_iter_[0]))
    return float(np.mean(accs)), {"iterations_mean": float(np.mean(iters))}


def arm_gram(Xtr, Xte, ytr, yte, K, cfg):
    centered_gram(Xtr, lower_only=True)
    return float("nan"), {}


ARMS = {
    "ridge (ours)": arm_ridge,
    "logistic (ours)": arm_logistic,
    "seed recipe batched (ours)": arm_seed_batched,
    "seed recipe as written": arm_seed_as_written,
    "sklearn loop": arm_sklearn,
    "Gram floor": arm_gram,
}


def run_dataset(name: str, shape: dict, cfg: dict, repeats: int, arms: list[str]) -> dict:
    from threadpoolctl import threadpool_limits

    X, y, clips = make_data(**shape)
    Xtr, Xte, ytr, yte, clips_tr = prepare(X, y, clips)
    del X
    K = shape["K"]
    cfg = dict(cfg)
    cfg["alpha"], alpha_scores = choose_alpha(Xtr, ytr, clips_tr, K)
    print(f"  [{name}] ridge alpha {cfg['alpha']} (validation accuracy {alpha_scores})", flush=True)
    times: dict[str, list[float]] = {a: [] for a in arms}
    acc: dict[str, float] = {}
    extra: dict[str, dict] = {}
    with threadpool_limits(limits=cfg["threads"]):
        n_warm = min(256, Xtr.shape[1])  # warm-up: first-call costs (imports, allocator, JIT) out of the timings
        for a in arms:
            ARMS[a](Xtr[:1, :n_warm], Xte[:1], ytr[:n_warm], yte, K, dict(cfg, epochs=2))
        for r in range(repeats):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            for a in order:
                t0 = time.perf_counter()
                acc[a], extra[a] = ARMS[a](Xtr, Xte, ytr, yte, K, cfg)
                times[a].append(time.perf_counter() - t0)
                print(f"  [{name}] repeat {r} {a}: {times[a][-1]:.2f} s, acc {acc[a]:.4f}", flush=True)
    med = {a: statistics.median(v) for a, v in times.items()}
    return {
        "shape": {"L": shape["L"], "N": shape["n_clips"] * shape["frames"], "D": shape["D"], "K": K,
                  "clips": shape["n_clips"], "frames_per_clip": shape["frames"],
                  "n_train": int(Xtr.shape[1]), "n_test": int(Xte.shape[1])},
        "ridge_alpha": {"chosen": cfg["alpha"], "validation_accuracy": alpha_scores},
        "arms": {a: {"seconds": times[a], "median_s": med[a], "held_out_accuracy": acc[a], **extra[a]}
                 for a in arms},
        "ratios": _ratios(med, acc),
    }


def _ratios(med: dict, acc: dict) -> dict:
    out = {}

    def put(key, num, den):
        if num in med and den in med and med[den] > 0:
            out[key] = med[num] / med[den]

    put("seed_as_written / ridge", "seed recipe as written", "ridge (ours)")
    put("seed_as_written / logistic", "seed recipe as written", "logistic (ours)")
    put("sklearn / ridge", "sklearn loop", "ridge (ours)")
    put("sklearn / logistic", "sklearn loop", "logistic (ours)")
    put("ridge / gram_floor", "ridge (ours)", "Gram floor")
    put("logistic / gram_floor", "logistic (ours)", "Gram floor")
    put("seed_as_written / seed_batched", "seed recipe as written", "seed recipe batched (ours)")
    if "logistic (ours)" in acc and "sklearn loop" in acc:
        out["accuracy: logistic - sklearn"] = acc["logistic (ours)"] - acc["sklearn loop"]
    if "ridge (ours)" in acc and "seed recipe as written" in acc:
        out["accuracy: ridge - seed_as_written"] = acc["ridge (ours)"] - acc["seed recipe as written"]
    if "ridge (ours)" in acc and "sklearn loop" in acc:
        out["accuracy: ridge - sklearn"] = acc["ridge (ours)"] - acc["sklearn loop"]
    return out


def markdown(results: dict) -> str:
    lines = []
    for name, r in results["datasets"].items():
        s = r["shape"]
        lines += [f"### {name}: L={s['L']} x N={s['N']} x D={s['D']}, {s['K']} classes "
                  f"(train {s['n_train']}, test {s['n_test']}); ridge alpha {r['ridge_alpha']['chosen']:g}", "",
                  "| arm | median s | held-out acc | iterations |", "|---|---:|---:|---:|"]
        for a, v in r["arms"].items():
            it = v.get("iterations_mean")
            acc = v["held_out_accuracy"]
            lines.append(f"| {a} | {v['median_s']:.2f} | {'-' if math.isnan(acc) else f'{acc:.4f}'} | "
                         f"{'-' if it is None else f'{it:.0f}'} |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:+.4f} |" if k.startswith("accuracy") else f"| {k} | {v:.2f}x |"
                  for k, v in r["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, a smoke run (seconds)")
    ap.add_argument("--threads", type=int, default=1, help="threads for every arm (torch and BLAS)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3 pooled, 1 per-frame)")
    ap.add_argument("--datasets", default="pooled,per-frame")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default benchmarks/results/probe_fit.json; "
                         "probe_fit_quick.json with --quick)")
    args = ap.parse_args(argv)
    out = args.out or RESULTS_DIR / ("probe_fit_quick.json" if args.quick else "probe_fit.json")
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_info

    cfg = {"C": 1.0, "tol": 1e-4, "max_iter": 100, "epochs": 250, "threads": args.threads}
    if args.quick:
        shapes = {"pooled": dict(L=4, n_clips=400, frames=1, D=64, K=5),
                  "per-frame": dict(L=4, n_clips=100, frames=8, D=64, K=5)}
        cfg["epochs"] = 20
        repeats = {"pooled": args.repeats or 1, "per-frame": args.repeats or 1}
    else:
        shapes = {"pooled": dict(L=24, n_clips=2000, frames=1, D=1024, K=10),
                  "per-frame": dict(L=24, n_clips=1000, frames=20, D=1024, K=10)}
        repeats = {"pooled": args.repeats or 3, "per-frame": args.repeats or 1}
    results = {
        "benchmark": "probe_fit", "quick": args.quick, "config": cfg,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {**machine(), "loadavg_start": os.getloadavg(), "torch_mkl": torch.backends.mkl.is_available(),
                    "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}},
        "datasets": {},
    }
    arms = list(ARMS)
    for name in args.datasets.split(","):
        print(f"{name}: {shapes[name]}", flush=True)
        results["datasets"][name] = run_dataset(name, dict(shapes[name], seed=0), cfg, repeats[name], arms)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["threadpools"] = [  # after the runs, so scikit-learn's and SciPy's are loaded too
        {k: i.get(k) for k in ("user_api", "internal_api", "version", "architecture", "filepath")}
        for i in threadpool_info()]
    write_json_atomic(out, results)
    print()
    print(markdown(results))
    print(f"\nwritten: {out}")
    return results


if __name__ == "__main__":
    main()
