"""Probe entry points: fit one probe per hook (:func:`fit_probes`), measure probes with controls over
seeds (:func:`probe_sweep`), and summarise with intervals (:func:`summarize`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

Tensor = torch.Tensor
from scipy.stats import t as student_t

from mstools.analysis.probes.features import as_feature_sets, layer_means, layer_std, stack_features
from mstools.analysis.probes.fits import LinearFit, Probe
from mstools.analysis.probes.metrics import accuracy, f1_macro, r2
from mstools.analysis.probes.solvers import fit_logistic, fit_ridge, fit_seed_recipe
from mstools.analysis.probes.splits import group_folds, group_split, shuffle_by_clip
from mstools.core.names import layer_of

__all__ = ["fit_probes", "probe_sweep", "summarize", "best_hook", "held_out_predictions", "cv_alpha", "ALPHA_GRID",
           "METHODS", "CONTROLS"]

METHODS = ("logistic", "ridge", "seed")
CONTROLS = ("shuffled",)


@dataclass
class _Target:
    name: str
    kind: str  # "categorical" | "continuous"
    rows: np.ndarray  # rows with a label
    values: np.ndarray  # codes (int64) or floats, for those rows
    classes: list[str] | None


def _target(labels: pd.DataFrame, name: str, continuous: Sequence[str]) -> _Target:
    if name not in labels.columns:
        raise KeyError(f"target {name!r} is not a column of labels (columns: {list(labels.columns)})")
    col = labels[name]
    rows = np.flatnonzero(col.notna().to_numpy())
    if name in continuous or (pd.api.types.is_float_dtype(col) and not pd.api.types.is_bool_dtype(col)):
        return _Target(name, "continuous", rows, col.to_numpy(dtype=np.float64)[rows], None)
    as_str = col.iloc[rows].astype(str).to_numpy()
    classes, codes = np.unique(as_str, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"target {name!r} has fewer than 2 classes ({list(classes)})")
    return _Target(name, "categorical", rows, codes.astype(np.int64), [str(c) for c in classes])


def _groups(labels: pd.DataFrame) -> np.ndarray:
    if "clip" not in labels.columns:
        raise KeyError(
            "labels needs a 'clip' column (group id: rows of one clip never straddle train and test); "
            "if every row is its own clip use labels.assign(clip=range(len(labels)))"
        )
    return labels["clip"].to_numpy()


# ----------------------------------------------------------------------------------------------
# One fit + score on a stack of layers
# ----------------------------------------------------------------------------------------------
def _standardize(Xtr: Tensor, Xte: Tensor | None) -> tuple[Tensor, Tensor]:
    """In place: z-score train (and test) with train statistics -> ``(mean [L, D], std [L, D])`` float64."""
    mean = layer_means(Xtr)
    std = layer_std(Xtr, mean)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for X in (Xtr,) if Xte is None else (Xtr, Xte):
        X -= mean.to(X.dtype).unsqueeze(1)
        X /= std.to(X.dtype).unsqueeze(1)
    return mean, std


#: Ridge penalties tried by cross-validation (``alpha="cv"``), in units of the training rows N.
ALPHA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _ridge_targets(t_values: np.ndarray, kind: str, n_classes: int) -> Tensor:
    return (torch.as_tensor(t_values, dtype=torch.float64) if kind == "continuous"
            else torch.nn.functional.one_hot(torch.as_tensor(t_values), n_classes).double())


def cv_alpha(X: Tensor, t_values: np.ndarray, kind: str, n_classes: int, groups: np.ndarray,
             grid: Sequence[float] = ALPHA_GRID, k: int = 5, seed: int = 0) -> Tensor:
    """Ridge penalty per layer chosen by ``k``-fold cross-validation **by clip**.

    Candidates are ``grid * N`` (N = rows of ``X``); the score is held-out accuracy (categorical
    targets) or R² (continuous), summed over folds; ties go to the larger penalty.

    Args:
        X: ``[L, N, D]`` features (standardised as they will be for the final fit).
        t_values: ``[N]`` class codes or values; groups: ``[N]`` clip ids.

    Returns:
        float64 ``[L]``: the chosen alpha of every layer.

    >>> X = torch.randn(2, 60, 3); y = (X[0, :, 0] > 0).long().numpy()
    >>> cv_alpha(X, y, "categorical", 2, np.arange(60), k=3).shape
    torch.Size([2])
    """
    L, N, _ = X.shape
    n_clips = len(np.unique(groups))
    folds = group_folds(groups, k=max(2, min(k, n_clips)), seed=seed)
    Y = _ridge_targets(t_values, kind, n_classes)
    scores = torch.zeros(len(grid), L, dtype=torch.float64)
    for te in folds:
        tr = np.setdiff1d(np.arange(N), te)
        Xtr, Xte = X[:, torch.as_tensor(tr)], X[:, torch.as_tensor(te)]
        for g, a in enumerate(grid):
            S = fit_ridge(Xtr, Y[tr], alpha=float(a) * len(tr)).scores(Xte)
            if kind == "continuous":
                scores[g] += r2(torch.as_tensor(t_values[te]), S).nan_to_num(-1e9)
            else:
                scores[g] += accuracy(torch.as_tensor(t_values[te]), S.argmax(-1))
    # the larger penalty wins a tie: flip, argmax (first max), flip back
    best = len(grid) - 1 - scores.flip(0).argmax(0)
    return torch.tensor([float(grid[b]) for b in best], dtype=torch.float64) * N


def _fit(method: str, X: Tensor, t_values: np.ndarray, kind: str, n_classes: int, opts: Mapping,
         groups: np.ndarray | None = None) -> LinearFit:
    if kind == "continuous" or method == "ridge":
        Y = _ridge_targets(t_values, kind, n_classes)
        opts = dict(opts)
        alpha = opts.pop("alpha", 1.0)
        if isinstance(alpha, str) or isinstance(alpha, (list, tuple)):
            if alpha != "cv" and isinstance(alpha, str):
                raise ValueError(f"ridge alpha must be a number, a list of candidates or 'cv', got {alpha!r}")
            grid = ALPHA_GRID if isinstance(alpha, str) else tuple(float(a) for a in alpha)
            g = groups if groups is not None else np.arange(X.shape[1])
            alpha = cv_alpha(X, t_values, kind, n_classes, g, grid=grid)
        fit = fit_ridge(X, Y, alpha=alpha, **opts)
        fit.info["alpha"] = torch.as_tensor(alpha, dtype=torch.float64).expand(X.shape[0]).clone()
        return fit
    if method == "logistic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # reported in the table's `converged`
            return fit_logistic(X, torch.as_tensor(t_values), n_classes=n_classes, **opts)
    if method == "seed":
        return fit_seed_recipe(X, torch.as_tensor(t_values), n_classes=n_classes, **opts)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _score(method: str, fit: LinearFit, Xte: Tensor, t_test: np.ndarray, kind: str, n_classes: int) -> dict:
    S = fit.scores(Xte)
    L = S.shape[0]
    nan = torch.full((L,), float("nan"), dtype=torch.float64)
    if kind == "continuous":
        return {"accuracy": nan, "f1_macro": nan, "r2": r2(torch.as_tensor(t_test), S)}
    yt = torch.as_tensor(t_test)
    pred = S.argmax(-1)
    onehot = torch.nn.functional.one_hot(yt, n_classes).double()
    if method == "logistic":
        out, target = torch.softmax(S.double(), -1), onehot
    elif method == "seed":
        out, target = S, onehot * 2 - 1
    else:
        out, target = S, onehot
    return {"accuracy": accuracy(yt, pred), "f1_macro": f1_macro(yt, pred, n_classes), "r2": r2(target, out)}


def _raw_space(fit: LinearFit, l: int, mean: Tensor | None, std: Tensor | None) -> tuple[Tensor, Tensor]:
    """Fold a standardisation into layer l's weights:
    ``((x - m) / s) W + b = x (W / s) + (b - (m / s) W)``."""
    W, b = fit.weight[l].double(), fit.bias[l].double()
    if mean is not None:
        W = W / std[l].unsqueeze(1)
        b = b - mean[l] @ W
    return W.float(), b.float()


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"ridge": {"alpha": 1.0}, "logistic": {"C": 1.0}, "seed": {}}


def _options(options: Mapping[str, Mapping[str, Any]] | None,
             defaults: Mapping[str, Mapping[str, Any]] = _DEFAULT_OPTIONS) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in defaults.items()}
    for k, v in (options or {}).items():
        if k not in out:
            raise ValueError(f"options for unknown method {k!r}; methods are {METHODS}")
        out[k].update(v)
    return out


def _width_groups(fset: Mapping[str, Tensor]) -> list[list[str]]:
    by_shape: dict[tuple, list[str]] = {}
    for h, t in fset.items():
        by_shape.setdefault((t.shape[0], int(np.prod(t.shape[1:]))), []).append(h)
    return list(by_shape.values())


def fit_probes(
    features: Any,
    labels: pd.DataFrame,
    target: str,
    method: str = "ridge",
    *,
    hooks: Sequence[str] | None = None,
    standardize: bool = True,
    continuous: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Probe]:
    """Fit one probe per hook on **all** labelled rows (no split) -> ``{hook: Probe}``, e.g. to make
    directions (see :mod:`mstools.analysis.directions`). Use :func:`probe_sweep` to *measure* probes.

    Features as in :func:`probe_sweep` (a single feature set). ``standardize`` z-scores features for
    ridge/logistic (folded back: the returned weights act on raw activations). Ridge's penalty
    ``options={"ridge": {"alpha": ...}}`` may be a number, a list of candidates (times N) or ``"cv"``
    (the default here: :data:`ALPHA_GRID` by 5-fold cross-validation by clip); the alpha used is in
    ``probe.meta["alpha"]``.

    >>> X = torch.randn(60, 4); lab = pd.DataFrame({"clip": range(60), "g": ["a", "b", "c"] * 20})
    >>> fit_probes({"blocks.3.hook_resid_post": X}, lab, "g")["blocks.3.hook_resid_post"].weight.shape
    torch.Size([4, 3])
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    sets = as_feature_sets(features, hooks, "trained")
    if len(sets) != 1:
        raise ValueError(f"fit_probes takes one feature set, got models {list(sets)}")
    fset = next(iter(sets.values()))
    t = _target(labels, target, continuous)
    groups = _groups(labels) if "clip" in labels.columns else np.arange(len(labels))
    opts = _options(options, {**_DEFAULT_OPTIONS, "ridge": {"alpha": "cv"}})
    out: dict[str, Probe] = {}
    for names in _width_groups(fset):
        X, _ = stack_features(fset, names)
        X = X[:, t.rows].contiguous() if len(t.rows) != X.shape[1] else X
        m = "ridge" if t.kind == "continuous" else method
        mean = std = None
        if standardize and m != "seed":
            mean, std = _standardize(X, None)
        fit = _fit(m, X, t.values, t.kind, len(t.classes or [0]), opts[m], groups[t.rows])
        for l, h in enumerate(names):
            W, b = _raw_space(fit, l, mean, std)
            meta = {"n_train": len(t.rows), "standardized": mean is not None, "options": opts[m]}
            if "alpha" in fit.info:
                meta["alpha"] = float(fit.info["alpha"][l])
            out[h] = Probe(h, target, m, W, b, t.classes, fit.input_norm, meta=meta)
    return out


def probe_sweep(
    features: Any,
    labels: pd.DataFrame,
    targets: Sequence[str] = ("genre",),
    methods: Sequence[str] = ("logistic", "ridge"),
    seeds: Sequence[int] = (0, 1, 2),
    controls: Sequence[str] = ("shuffled",),
    test_size: float = 0.25,
    *,
    hooks: Sequence[str] | None = None,
    standardize: bool = True,
    continuous: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    probes_out: dict | None = None,
) -> pd.DataFrame:
    """Fit and score probes for every (feature set, hook, target, method, control, seed) -> tidy table.

    For each seed, rows are split **by clip** (:func:`group_split`, stratified by class for categorical
    targets); all feature sets share that split, so trained vs untrained is a paired comparison. Every
    hook of one width is fitted in one batched call. Controls:

    - ``"shuffled"``: labels permuted across clips (:func:`shuffle_by_clip`, seeded by ``seed``), then
      split, fitted and scored on the shuffled labels: chance level unless a probe memorises.
    - untrained: pass features of an untrained model as another feature set
      (``{"trained": ..., "untrained": ...}``); it appears in the ``model`` column.

    Methods: ``"logistic"`` (:func:`fit_logistic`, default C=1), ``"ridge"`` (:func:`fit_ridge` on
    one-hot targets, default alpha=1), ``"seed"`` (:func:`fit_seed_recipe`, its own L2 normalisation).
    ``standardize`` z-scores features with train statistics for ridge and logistic. Continuous targets
    (float columns, or those named in ``continuous``) are always fitted by ridge. ``options`` overrides
    solver settings per method, e.g. ``{"ridge": {"alpha": 100.0}, "logistic": {"C": 0.1}}``. The
    defaults are scikit-learn's (alpha=1, C=1); with as many dimensions as training rows they
    under-regularise (on synthetic 1,024-dim data with 1,500 training rows alpha 30-300 gained ~0.03
    accuracy over alpha 1), so compare a few values when D is close to N.

    Columns: ``model, hook, layer, target, method, control, seed, accuracy, f1_macro, r2, n_train,
    n_test, converged``. ``r2`` is the R² of the probe's outputs against its targets: one-hot for ridge,
    probabilities vs one-hot for logistic (a Brier skill score), ±1 for seed, the value for continuous
    targets. ``accuracy``/``f1_macro`` are NaN for continuous targets.

    If ``probes_out`` is a dict, it receives every fitted :class:`Probe` (raw activation space) keyed by
    ``(model, hook, target, method, control, seed)``.
    """
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
    for c in controls:
        if c not in CONTROLS:
            raise ValueError(f"unknown control {c!r}; choose from {CONTROLS} (untrained: pass its features)")
    sets = as_feature_sets(features, hooks, "trained")
    groups_all = _groups(labels)
    N = len(labels)
    for model, fset in sets.items():
        for h, t in fset.items():
            if t.shape[0] != N:
                raise ValueError(f"features[{model!r}][{h!r}] has {t.shape[0]} rows but labels has {N}")
    opts = _options(options)
    stacks = {model: [stack_features(fset, names) for names in _width_groups(fset)]
              for model, fset in sets.items()}
    rows: list[dict] = []
    for target in targets:
        t = _target(labels, target, continuous)
        K = len(t.classes) if t.classes else 1
        groups = groups_all[t.rows]
        t_methods = ["ridge"] if t.kind == "continuous" else list(methods)
        for control in ("none", *controls):
            for seed in seeds:
                vals = (t.values if control == "none"
                        else shuffle_by_clip(t.values, groups, seed=10_000 + seed))
                tr, te = group_split(groups, vals if t.kind == "categorical" else None, test_size, seed)
                rtr, rte = torch.as_tensor(t.rows[tr]), torch.as_tensor(t.rows[te])
                for model, stack in stacks.items():
                    for X, names in stack:
                        results = _sweep_one(X, names, rtr, rte, vals[tr], vals[te], t, K, t_methods,
                                             standardize, opts, groups[tr])
                        for method, (metrics, fit, mean, std) in results.items():
                            conv = fit.info.get("converged")
                            for l, h in enumerate(names):
                                rows.append({
                                    "model": model, "hook": h, "layer": layer_of(h), "target": target,
                                    "method": method, "control": control, "seed": seed,
                                    "accuracy": float(metrics["accuracy"][l]),
                                    "f1_macro": float(metrics["f1_macro"][l]), "r2": float(metrics["r2"][l]),
                                    "n_train": len(tr), "n_test": len(te),
                                    "converged": True if conv is None else bool(conv[l]),
                                })
                                if probes_out is not None:
                                    W, b = _raw_space(fit, l, mean, std)
                                    probes_out[(model, h, target, method, control, seed)] = Probe(
                                        h, target, method, W, b, t.classes, fit.input_norm,
                                        meta={"model": model, "seed": seed, "control": control,
                                              "n_train": len(tr), "n_test": len(te), "options": opts[method]})
    return pd.DataFrame(rows, columns=["model", "hook", "layer", "target", "method", "control", "seed",
                                       "accuracy", "f1_macro", "r2", "n_train", "n_test", "converged"])


def _sweep_one(X, names, rtr, rte, ytr, yte, t: _Target, K, methods, standardize, opts, gtr) -> dict:
    Xtr, Xte = X.index_select(1, rtr), X.index_select(1, rte)
    out = {}
    if "seed" in methods:  # before standardisation: the recipe normalises raw activations itself
        fit = _fit("seed", Xtr, ytr, t.kind, K, opts["seed"])
        out["seed"] = (_score("seed", fit, Xte, yte, t.kind, K), fit, None, None)
    mean = std = None
    if standardize and any(m != "seed" for m in methods):
        mean, std = _standardize(Xtr, Xte)
    for m in methods:
        if m != "seed":
            fit = _fit(m, Xtr, ytr, t.kind, K, opts[m], gtr)
            out[m] = (_score(m, fit, Xte, yte, t.kind, K), fit, mean, std)
    return {m: out[m] for m in methods}


def summarize(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("accuracy", "f1_macro", "r2"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean and a t-interval over seeds for each (model, hook, layer, target, method, control).

    Columns: the keys, ``n_seeds``, and ``{metric}_mean``, ``{metric}_lo``, ``{metric}_hi`` for each metric
    (``mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n)``, clipped to the metric's range: accuracy and
    F1 to [0, 1], R² to at most 1; NaN bounds with a single seed).

    >>> df = pd.DataFrame({"hook": ["h"] * 3, "seed": [0, 1, 2], "accuracy": [0.5, 0.6, 0.7]})
    >>> summarize(df, ["accuracy"])[["accuracy_mean", "n_seeds"]].values.round(2).tolist()
    [[0.6, 3.0]]
    """
    keys = [c for c in ("model", "hook", "layer", "target", "method", "control") if c in df.columns]
    metrics = [m for m in metrics if m in df.columns]
    g = df.groupby(keys, sort=False, dropna=False)
    out = g.size().rename("n_seeds").reset_index()
    for m in metrics:
        mean = g[m].mean().to_numpy()
        sd = g[m].std(ddof=1).to_numpy()
        n = g[m].count().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            tq = student_t.ppf((1 + confidence) / 2, np.maximum(n - 1, 1))
            half = np.where(n > 1, tq * sd / np.sqrt(n), np.nan)
        lo, hi = _RANGES.get(m, (-np.inf, np.inf))
        out[f"{m}_mean"] = mean
        out[f"{m}_lo"] = np.clip(mean - half, lo, hi)
        out[f"{m}_hi"] = np.clip(mean + half, lo, hi)
    return out


def best_hook(summary: pd.DataFrame, target: str, method: str = "logistic", *, model: str = "trained",
              metric: str = "accuracy", tiebreak: str = "r2", tol: float = 1e-9) -> str:
    """The one rule for "the best layer" of a factor: the hook (with a layer, no control) whose mean
    held-out ``metric`` is highest; hooks within ``tol`` of it tie, and ties go to the higher mean
    ``tiebreak`` (R² by default: it still separates layers that all classify perfectly), then to the
    earlier layer.

    Args:
        summary: :func:`summarize` of a :func:`probe_sweep` table.
        target, method, model: which probes compete.

    >>> s = pd.DataFrame({"model": "trained", "control": "none", "method": "ridge", "target": "g",
    ...                   "hook": ["a", "b", "c"], "layer": [0, 1, 2], "accuracy_mean": [0.9, 1.0, 1.0],
    ...                   "r2_mean": [0.5, 0.6, 0.8]})
    >>> best_hook(s, "g", "ridge")
    'c'
    """
    s = summary
    for col, value in (("model", model), ("control", "none"), ("method", method), ("target", target)):
        if col in s.columns:
            s = s[s[col] == value]
    s = s[s["layer"] >= 0]
    if s.empty:
        raise ValueError(f"no probes of target {target!r}, method {method!r}, model {model!r} with a layer")
    m = f"{metric}_mean"
    top = s[s[m] >= s[m].max() - tol]
    t = f"{tiebreak}_mean"
    keys, asc = ([t, "layer"], [False, True]) if t in top.columns else (["layer"], [True])
    return str(top.sort_values(keys, ascending=asc).iloc[0]["hook"])


#: Ranges metrics cannot leave (intervals are clipped to them).
_RANGES = {"accuracy": (0.0, 1.0), "f1_macro": (0.0, 1.0), "r2": (-np.inf, 1.0)}


def held_out_predictions(features: torch.Tensor, labels: pd.DataFrame, target: str, method: str = "logistic", *,
                         seed: int = 0, test_size: float = 0.25,
                         options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted labels of the held-out clips of one split (e.g. for a confusion matrix).

    The split is the one :func:`mstools.analysis.probes.probe_sweep` uses for the same ``seed`` and
    ``test_size`` (by clip, stratified by class), and the probe is fitted the same way
    (:func:`mstools.analysis.probes.fit_probes` on the training rows, with the sweep's default solver
    options unless ``options`` says otherwise), so the accuracy of these predictions is the sweep's
    accuracy for that seed.

    Args:
        features: ``[N, D]`` pooled activations of one hook (rows in the order of ``labels``).
        labels: DataFrame with a ``clip`` column and the ``target`` column.
        target: a categorical label column, e.g. ``"genre"``.
        method: ``"logistic"``, ``"ridge"`` or ``"seed"``.

    Returns:
        ``(y_true, y_pred)``, two string arrays ``[N_test]``.

    >>> X = torch.cat([torch.zeros(20, 2), torch.ones(20, 2)]); lab = pd.DataFrame({"clip": range(40), "g": ["a"] * 20 + ["b"] * 20})
    >>> yt, yp = held_out_predictions(X, lab, "g", "ridge"); bool((yt == yp).all())
    True
    """
    X = features.reshape(features.shape[0], -1)
    if X.shape[0] != len(labels):
        raise ValueError(f"features has {X.shape[0]} rows, labels {len(labels)}")
    col = labels[target]
    rows = np.flatnonzero(col.notna().to_numpy())
    y = col.iloc[rows].astype(str).to_numpy()
    groups = labels["clip"].to_numpy()[rows]
    tr, te = group_split(groups, y, test_size, seed)
    train = labels.iloc[rows[tr]].reset_index(drop=True)
    probe = fit_probes({"x": X[rows[tr]]}, train, target, method,
                       options=_options(options))["x"]
    y_pred = probe.predict(X[rows[te]].float())
    return y[te].astype(object), np.asarray(y_pred, dtype=object)
