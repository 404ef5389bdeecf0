"""Linear probes for every hook at once: ridge, logistic, the seed paper's recipe; splits, metrics, controls.

All layers are fitted **together** in torch: features are stacked to ``X [L, N, D]`` (one row of the
layer axis per hook) and every solver works on the whole stack (batched Gram matrices and Cholesky
solves, batched L-BFGS, batched Adam), never a Python loop of scikit-learn fits.

Inputs (activations come from elsewhere in the package, e.g. a store of pooled activations):

- ``features``: ``{hook name: Tensor [N, D]}`` (float32 or float16; trailing dims are flattened), or a
  stacked ``Tensor [L, N, D]`` with ``hooks=[L names]``; several feature sets (e.g. a trained and an
  untrained model) as ``{"trained": {...}, "untrained": {...}}``. Anything with ``.hooks`` and
  ``.features(hook)`` (an activation store) is accepted in place of a ``{hook: Tensor}`` mapping.
- ``labels``: a ``pandas.DataFrame`` with N rows, a ``clip`` column (group id: rows of one clip are
  never split between train and test) and one column per target (strings or ints: classes; floats:
  continuous targets such as ``bpm``).

Example (two hooks, a genre that the second layer reads):

>>> import torch, pandas as pd
>>> g = torch.Generator().manual_seed(0)
>>> y = torch.arange(80) % 2
>>> feats = {"blocks.0.hook_resid_post": torch.randn(80, 16, generator=g),
...          "blocks.1.hook_resid_post": torch.randn(80, 16, generator=g) + 4 * y[:, None]}
>>> labels = pd.DataFrame({"clip": range(80), "genre": ["rock", "jazz"] * 40})
>>> df = probe_sweep(feats, labels, targets=["genre"], methods=("ridge",), seeds=(0, 1))
>>> s = summarize(df).query("control == 'none'")
>>> s["accuracy_mean"].tolist()[1], list(df.columns[:7])
(1.0, ['model', 'hook', 'layer', 'target', 'method', 'control', 'seed'])
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = [
    "LinearFit",
    "Probe",
    "layer_of",
    "stack_features",
    "centered_gram",
    "fit_ridge",
    "fit_logistic",
    "fit_seed_recipe",
    "accuracy",
    "f1_macro",
    "r2",
    "group_split",
    "shuffle_by_clip",
    "fit_probes",
    "probe_sweep",
    "summarize",
]

Tensor = torch.Tensor
METHODS = ("logistic", "ridge", "seed")
CONTROLS = ("shuffled",)
_LAYER_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_CHUNK_BYTES = 512 * 2**20  # centred copies of X are made this many bytes of layers at a time


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def layer_of(hook: str) -> int:
    """Layer index parsed from ``blocks.{l}.`` in a hook name, else -1.

    >>> layer_of("blocks.12.hook_resid_post"), layer_of("hook_embed")
    (12, -1)
    """
    m = _LAYER_RE.search(hook)
    return int(m.group(1)) if m else -1


def _is_store(obj: Any) -> bool:
    return hasattr(obj, "hooks") and callable(getattr(obj, "features", None)) and not isinstance(obj, Mapping)


def _as_feature_sets(
    features: Any, hooks: Sequence[str] | None, model_name: str
) -> dict[str, dict[str, Tensor]]:
    """Normalise every accepted input form to ``{model: {hook: Tensor [N, D]}}``."""

    def one_set(obj: Any) -> dict[str, Tensor]:
        if _is_store(obj):
            names = list(hooks) if hooks is not None else list(obj.hooks)
            return {h: obj.features(h) for h in names}
        if isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
            if hooks is None:
                return dict(obj)
            missing = [h for h in hooks if h not in obj]
            if missing:
                raise KeyError(f"hooks {missing} not in features (have {list(obj)[:5]}...)")
            return {h: obj[h] for h in hooks}
        raise TypeError(
            "features must be {hook: Tensor [N, D]}, a Tensor [L, N, D] with hooks=[...], an activation "
            f"store, or {{model: one of these}}; got {type(obj).__name__}"
        )

    if isinstance(features, Tensor):
        if features.ndim != 3 or hooks is None or len(hooks) != features.shape[0]:
            raise ValueError(
                f"a stacked features tensor must be [L, N, D] with hooks=[L names]; got shape "
                f"{tuple(features.shape)} and {None if hooks is None else len(hooks)} hook names"
            )
        return {model_name: dict(zip(hooks, features.unbind(0)))}
    if isinstance(features, Mapping) and features and all(isinstance(v, Mapping) or _is_store(v)
                                                          for v in features.values()):
        return {str(m): one_set(v) for m, v in features.items()}  # {model: feature set}
    return {model_name: one_set(features)}


def stack_features(
    features: Mapping[str, Tensor], hooks: Sequence[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, list[str]]:
    """Stack ``{hook: Tensor [N, ...]}`` into ``X [L, N, D]`` (trailing dims flattened, cast to ``dtype``).

    All hooks must share N and D (group hooks of different widths first, as :func:`probe_sweep` does).

    >>> X, names = stack_features({"blocks.0.x": torch.zeros(5, 3), "blocks.1.x": torch.ones(5, 3)})
    >>> tuple(X.shape), names
    ((2, 5, 3), ['blocks.0.x', 'blocks.1.x'])
    """
    names = list(hooks) if hooks is not None else list(features)
    if not names:
        raise ValueError("no hooks to stack")
    mats = [features[h].reshape(features[h].shape[0], -1) for h in names]
    shapes = {tuple(m.shape) for m in mats}
    if len(shapes) != 1:
        raise ValueError(f"hooks have different shapes {sorted(shapes)}; stack hooks of one width at a time")
    X = torch.empty((len(mats), *mats[0].shape), dtype=dtype)
    for i, m in enumerate(mats):
        X[i].copy_(m)
    return X, names


def _as_3d(X: Tensor) -> tuple[Tensor, bool]:
    if X.ndim == 2:
        return X.unsqueeze(0), True
    if X.ndim != 3:
        raise ValueError(f"X must be [L, N, D] or [N, D], got shape {tuple(X.shape)}")
    return X, False


def _layer_means(X: Tensor, rows: int = 2048) -> Tensor:
    """Per-layer column means ``[L, D]`` float64: float32 (cascade) sums of row blocks, accumulated in
    float64 (~5e-8 relative error at N = 15,000; 15x faster than summing in float64 throughout)."""
    L, N, D = X.shape
    acc = torch.zeros(L, D, dtype=torch.float64)
    for r in range(0, N, rows):
        acc_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
        acc += X[:, r:r + rows].sum(1, dtype=acc_dtype).double()
    return acc / N


def _layer_std(X: Tensor, mean: Tensor) -> Tensor:
    """Per-layer column standard deviations ``[L, D]`` (population, two-pass around ``mean``), float64."""
    L, N, D = X.shape
    acc = torch.zeros(L, D, dtype=torch.float64)
    m = mean.to(torch.float64 if X.dtype == torch.float64 else torch.float32).unsqueeze(1)
    for r in range(0, N, 2048):
        acc += ((X[:, r:r + 2048] - m) ** 2).sum(1).double()
    return (acc / N).sqrt()


def _chunks(L: int, N: int, D: int, itemsize: int, layer_chunk: int | None) -> list[slice]:
    step = layer_chunk or max(1, _CHUNK_BYTES // max(1, N * D * itemsize))
    return [slice(a, min(L, a + step)) for a in range(0, L, step)]


def _runs(layers: Tensor) -> list[tuple[int, int]]:
    """Contiguous ``[a, b)`` runs of a sorted index tensor, so subsets of layers are read as views."""
    idx = layers.tolist()
    runs, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            runs.append((start, v + 1))
            start = None
    return runs


# ----------------------------------------------------------------------------------------------
# Fitted maps
# ----------------------------------------------------------------------------------------------
@dataclass
class LinearFit:
    """L linear maps fitted together: ``scores[l] = x @ weight[l] + bias[l]``.

    ``weight [L, D, C]``, ``bias [L, C]``; ``input_norm="l2"`` means rows are divided by their L2 norm
    first (the seed recipe); ``info`` holds solver details (``n_iter [L]``, ``converged [L]``, ...).
    """

    weight: Tensor
    bias: Tensor
    input_norm: str = "none"
    info: dict = field(default_factory=dict)

    def scores(self, X: Tensor) -> Tensor:
        """``X [L, N, D]`` (or ``[N, D]``, applied to every layer) -> scores ``[L, N, C]``."""
        if X.ndim == 2:
            X = X.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        X = X.to(self.weight.dtype)
        if self.input_norm == "l2":
            X = X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.baddbmm(self.bias.unsqueeze(1), X, self.weight)


@dataclass
class Probe:
    """One fitted probe at one hook, in **raw activation space** (standardisation folded in).

    ``weight [D, C]``, ``bias [C]``; ``classes`` are the class names (column order) or ``None`` for a
    continuous target (C = 1). ``input_norm="l2"``: the seed recipe's probe reads ``x / ||x||``.
    ``meta`` records model, seed, control, split sizes and solver settings.

    >>> p = Probe("blocks.0.hook_resid_post", "genre", "ridge", torch.eye(2), torch.zeros(2), ["a", "b"])
    >>> p.predict(torch.tensor([[0.0, 1.0]])).tolist()
    ['b']
    """

    hook: str
    target: str
    method: str
    weight: Tensor
    bias: Tensor
    classes: list[str] | None
    input_norm: str = "none"
    meta: dict = field(default_factory=dict)

    def scores(self, x: Tensor) -> Tensor:
        """``x [N, D]`` -> ``[N, C]`` (logits, regression outputs or the seed's ±1 scores)."""
        x = x.reshape(x.shape[0], -1).to(self.weight.dtype)
        if self.input_norm == "l2":
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x @ self.weight + self.bias

    def predict(self, x: Tensor) -> np.ndarray:
        """Class names ``[N]`` (argmax of the scores), or the regressed values for a continuous target."""
        s = self.scores(x)
        if self.classes is None:
            return s[:, 0].numpy()
        return np.asarray(self.classes, dtype=object)[s.argmax(-1).numpy()]

    def column(self, label: str | None = None) -> Tensor:
        """Weight vector ``[D]`` of class ``label`` (or the single column of a continuous probe)."""
        if self.classes is None:
            return self.weight[:, 0]
        if label not in self.classes:
            raise KeyError(f"class {label!r} not in this probe's classes {self.classes}")
        return self.weight[:, self.classes.index(label)]


# ----------------------------------------------------------------------------------------------
# Ridge (closed form)
# ----------------------------------------------------------------------------------------------
def _centered_chunks(X: Tensor, dtype: torch.dtype, layer_chunk: int | None):
    """Yield ``(slice, Xc [l, N, D] centred copy in dtype, mean [l, D] float64)`` over layer chunks."""
    L, N, D = X.shape
    for sl in _chunks(L, N, D, torch.empty((), dtype=dtype).element_size(), layer_chunk):
        mean = _layer_means(X[sl])
        yield sl, X[sl].to(dtype) - mean.to(dtype).unsqueeze(1), mean  # a new tensor: X is not modified


def _gram_into(Xc: Tensor, out: Tensor, lower_only: bool) -> None:
    """``out[l] = Xc[l]^T Xc[l]``; with ``lower_only`` only the block lower triangle is computed (about 30%
    fewer flops at D = 1024; the strict upper triangle is then zero), which is all a Cholesky reads."""
    D = Xc.shape[-1]
    if not lower_only or D < 256:
        torch.bmm(Xc.transpose(1, 2), Xc, out=out)
        return
    out.zero_()
    step = -(-D // 4)
    for r0 in range(0, D, step):
        r1 = min(D, r0 + step)
        out[:, r0:r1, :r1] = torch.bmm(Xc[:, :, r0:r1].transpose(1, 2), Xc[:, :, :r1])
    out.tril_()


def centered_gram(
    X: Tensor, *, dtype: torch.dtype = torch.float32, layer_chunk: int | None = None, lower_only: bool = False
) -> tuple[Tensor, Tensor]:
    """Centred Gram matrices ``G[l] = (X[l] - mean[l])^T (X[l] - mean[l])`` -> ``(G [L, D, D], mean [L, D])``.

    Means are accumulated in float64 and subtracted *before* the product (no ``X^T X - N mu mu^T``
    cancellation). ``lower_only=True`` computes only the lower triangle (strict upper triangle zero), as
    :func:`fit_ridge` does: this is its compute floor when N >= D.

    >>> G, mu = centered_gram(torch.tensor([[[1.0], [3.0]]]))
    >>> G.tolist(), mu.tolist()
    ([[[2.0]]], [[2.0]])
    """
    X, squeeze = _as_3d(X)
    L, N, D = X.shape
    G = torch.empty(L, D, D, dtype=dtype)
    mean = torch.empty(L, D, dtype=torch.float64)
    for sl, Xc, mu in _centered_chunks(X, dtype, layer_chunk):
        _gram_into(Xc, G[sl], lower_only)
        mean[sl] = mu
    return (G[0], mean[0]) if squeeze else (G, mean)


def _as_targets(Y: Tensor | np.ndarray, N: int) -> Tensor:
    Y = torch.as_tensor(np.asarray(Y) if not isinstance(Y, Tensor) else Y, dtype=torch.float64)
    if Y.ndim == 1:
        Y = Y.unsqueeze(1)
    if Y.ndim != 2 or Y.shape[0] != N:
        raise ValueError(f"targets must be [N] or [N, C] with N={N}, got shape {tuple(Y.shape)}")
    return Y


def _codes(y: Tensor | np.ndarray, N: int, n_classes: int | None) -> tuple[Tensor, int]:
    """Class codes ``[N]`` (int64) and the number of classes, checked."""
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).long().flatten()
    if y.shape[0] != N:
        raise ValueError(f"y has {y.shape[0]} rows, X has {N}")
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if N and (int(y.min()) < 0 or int(y.max()) >= K):
        raise ValueError(f"class codes must be in [0, {K}), got [{int(y.min())}, {int(y.max())}]")
    return y, K


def _cholesky(A: Tensor, what: str, block: int = 128) -> Tensor:
    """Lower Cholesky factors of a batch of SPD matrices ``A [L, D, D]`` (float64), computed **in place**.

    Blocked, right-looking, reading and writing only the lower triangle: the trailing updates are batched
    matrix products, about 2x faster than ``torch.linalg.cholesky`` on CPU at D = 1024 (same result to
    ~1e-15). Raises a ``ValueError`` naming the layers whose matrix is not positive definite.
    """
    D = A.shape[-1]
    bad = torch.zeros(A.shape[0], dtype=torch.bool)
    for k in range(0, D, block):
        e = min(D, k + block)
        L11, info = torch.linalg.cholesky_ex(A[:, k:e, k:e])
        bad |= info != 0
        A[:, k:e, k:e] = L11
        if e < D:
            L21 = torch.linalg.solve_triangular(L11.transpose(1, 2), A[:, e:, k:e], upper=True, left=False)
            A[:, e:, k:e] = L21
            for i in range(e, D, block):
                j = min(D, i + block)
                A[:, i:j, e:j].baddbmm_(L21[:, i - e:j - e], L21[:, :j - e].transpose(1, 2), alpha=-1)
    if bool(bad.any()):
        raise ValueError(f"{what} is not positive definite at layer(s) {bad.nonzero().flatten().tolist()}: "
                         f"use alpha > 0 (more regularisation)")
    return A.tril_()


def _cho_solve(Lc: Tensor, B: Tensor) -> Tensor:
    """Solve ``(Lc Lc^T) X = B`` by two triangular solves (``torch.cholesky_solve`` is ~10x slower on CPU)."""
    Z = torch.linalg.solve_triangular(Lc, B, upper=False)
    return torch.linalg.solve_triangular(Lc.transpose(1, 2), Z, upper=True)


def fit_ridge(
    X: Tensor,
    Y: Tensor | np.ndarray,
    alpha: float | Tensor = 1.0,
    *,
    fit_intercept: bool = True,
    dtype: torch.dtype = torch.float32,
    layer_chunk: int | None = None,
) -> LinearFit:
    """Closed-form ridge for every layer at once (scikit-learn ``Ridge(alpha)``'s objective).

    Per layer l minimises ``||Y - X[l] W - b||^2 + alpha ||W||^2`` (intercept not penalised: X and Y are
    centred first). Gram matrices are formed in ``dtype`` from float64-centred data, then solved by a
    float64 Cholesky: primal ``(Xc^T Xc + alpha I) W = Xc^T Yc`` when N >= D, dual
    ``W = Xc^T (Xc Xc^T + alpha I)^-1 Yc`` when N < D (same solution, cheaper).

    Args:
        X: ``[L, N, D]`` (or ``[N, D]``); Y: ``[N, C]`` targets (one-hot, ±1 or continuous) or ``[N]``;
        alpha: scalar or ``[L]``; dtype: precision of the Gram products (float64 for exact comparisons).
    Returns:
        :class:`LinearFit` with ``weight [L, D, C]``, ``bias [L, C]`` in ``dtype``.

    >>> X = torch.randn(3, 50, 4); W = torch.randn(4, 1)
    >>> fit = fit_ridge(X, X[0] @ W, alpha=1e-8, dtype=torch.float64)
    >>> torch.allclose(fit.weight[0], W.double(), atol=1e-5)
    True
    """
    X, _ = _as_3d(X)
    L, N, D = X.shape
    Y = _as_targets(Y, N)
    C = Y.shape[1]
    alpha_t = torch.as_tensor(alpha, dtype=torch.float64).expand(L).clone()
    if bool((alpha_t < 0).any()) or not bool(torch.isfinite(alpha_t).all()):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    y_mean = Y.mean(0) if fit_intercept else torch.zeros(C, dtype=torch.float64)
    Yc = (Y - y_mean).to(dtype)
    weight = torch.empty(L, D, C, dtype=dtype)
    bias = torch.empty(L, C, dtype=dtype)
    chunks = (
        _centered_chunks(X, dtype, layer_chunk)
        if fit_intercept
        else ((sl, X[sl].to(dtype), torch.zeros(sl.stop - sl.start, D, dtype=torch.float64))
              for sl in _chunks(L, N, D, torch.empty((), dtype=dtype).element_size(), layer_chunk))
    )
    for sl, Xc, mean in chunks:
        a = alpha_t[sl].view(-1, 1)
        if N >= D:
            G = torch.empty(Xc.shape[0], D, D, dtype=dtype)
            _gram_into(Xc, G, lower_only=True)
            A = G.double()
            del G
            A.diagonal(dim1=-2, dim2=-1).add_(a)
            B = torch.matmul(Yc.T, Xc).transpose(1, 2).double()  # (Yc^T Xc)^T: row-major reads of Xc
            W = _cho_solve(_cholesky(A, "X^T X + alpha I"), B)
        else:
            K = torch.bmm(Xc, Xc.transpose(1, 2)).double()
            K.diagonal(dim1=-2, dim2=-1).add_(a)
            Acoef = _cho_solve(_cholesky(K, "X X^T + alpha I"), Yc.double().expand(K.shape[0], N, C))
            W = torch.bmm(Xc.transpose(1, 2), Acoef.to(dtype)).double()
        weight[sl] = W.to(dtype)
        bias[sl] = (y_mean - torch.bmm(mean.unsqueeze(1), W).squeeze(1)).to(dtype)
    return LinearFit(weight, bias, info={"alpha": alpha_t, "form": "primal" if N >= D else "dual"})


# ----------------------------------------------------------------------------------------------
# Logistic (batched L-BFGS)
# ----------------------------------------------------------------------------------------------
def _lbfgs(fg, theta: Tensor, *, tol: float, max_iter: int, history: int, ftol: float,
           first_step: Tensor | None = None, c1: float = 1e-4, max_ls: int = 30):
    """Minimise L independent smooth convex objectives together (one per row of ``theta [L, P]``).

    ``fg(theta_sub [k, P], layers [k]) -> (f [k], g [k, P], gmax [k])``; a layer stops when ``gmax <= tol``
    (converged), when its relative decrease falls under ``ftol`` (converged), or when its backtracking
    (Armijo) line search fails to decrease (precision limit). Two-loop recursion on the stacked
    history; curvature pairs with ``s.y <= 0`` are ignored for that layer.
    Returns ``(theta, n_iter [L], converged [L])``.
    """
    L, P = theta.shape
    tiny = torch.finfo(theta.dtype).tiny
    every = torch.arange(L)
    f, g, gmax = fg(theta, every)
    converged = gmax <= tol
    done = converged.clone()
    n_iter = torch.zeros(L, dtype=torch.long)
    S: list[Tensor] = []
    Yh: list[Tensor] = []
    rho: list[Tensor] = []
    for _ in range(max_iter):
        act = (~done).nonzero().flatten()
        if act.numel() == 0:
            break
        q = g.clone()
        alphas = []
        for s, y, r in zip(reversed(S), reversed(Yh), reversed(rho)):
            a = r * (s * q).sum(1)
            q -= a.unsqueeze(1) * y
            alphas.append(a)
        if S:
            sy, yy = (S[-1] * Yh[-1]).sum(1), (Yh[-1] * Yh[-1]).sum(1)
            gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp_min(tiny), torch.ones_like(sy))
        elif first_step is not None:
            gamma = first_step
        else:
            gamma = 1.0 / g.norm(dim=1).clamp_min(1.0)
        d = q * gamma.unsqueeze(1)
        for s, y, r, a in zip(S, Yh, rho, reversed(alphas)):
            b = r * (y * d).sum(1)
            d += (a - b).unsqueeze(1) * s
        d.neg_()
        gd = (g * d).sum(1)
        bad = gd >= 0
        if bool(bad.any()):  # not a descent direction (numerical trouble): steepest descent there
            d[bad] = -g[bad] / g[bad].norm(dim=1, keepdim=True).clamp_min(1.0)
            gd = (g * d).sum(1)
        t = torch.ones(L, dtype=theta.dtype)
        theta_new, f_new, g_new, gmax_new = theta.clone(), f.clone(), g.clone(), gmax.clone()
        pending = act
        for _ls in range(max_ls):
            x = theta[pending] + t[pending].unsqueeze(1) * d[pending]
            fp, gp, gm = fg(x, pending)
            ok = fp <= f[pending] + c1 * t[pending] * gd[pending]
            idx = pending[ok]
            theta_new[idx], f_new[idx], g_new[idx], gmax_new[idx] = x[ok], fp[ok], gp[ok], gm[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            t[pending] *= 0.5
        failed = torch.zeros(L, dtype=torch.bool)
        failed[pending] = True
        s, y = theta_new - theta, g_new - g
        sy = (s * y).sum(1)
        S.append(s)
        Yh.append(y)
        rho.append(torch.where(sy > 0, 1.0 / sy.clamp_min(tiny), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Yh.pop(0), rho.pop(0)
        fdec = (f - f_new) / torch.maximum(torch.maximum(f.abs(), f_new.abs()), torch.ones_like(f))
        n_iter[act] += 1
        theta, f, g, gmax = theta_new, f_new, g_new, gmax_new
        is_act = torch.zeros(L, dtype=torch.bool)
        is_act[act] = True
        stop = is_act & ((gmax <= tol) | (fdec <= ftol) & ~failed)
        converged |= stop
        done |= stop | failed
    return theta, n_iter, converged


def fit_logistic(
    X: Tensor,
    y: Tensor | np.ndarray,
    C: float = 1.0,
    *,
    n_classes: int | None = None,
    tol: float = 1e-4,
    max_iter: int = 100,
    history: int = 10,
    precondition: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> LinearFit:
    """Multinomial logistic regression with an L2 penalty, every layer at once (batched L-BFGS).

    Same objective and stopping rule as scikit-learn's ``LogisticRegression(C=C, solver="lbfgs")``:
    per layer it minimises ``(1/N) sum_i CE(softmax(x_i W + b), y_i) + ||W||^2 / (2 C N)`` (intercept not
    penalised; equivalently ``C sum_i CE + ||W||^2 / 2``) and stops when the largest absolute gradient
    entry is ``<= tol``, when the relative decrease of the objective falls under ``64 * eps(dtype)``
    (scikit-learn's ``ftol``), or after ``max_iter`` iterations. With two classes scikit-learn fits one binary
    weight vector; its solution is the multinomial one at ``C / 2`` (columns ``-w/2, +w/2``), which is
    what is fitted then, so probabilities match in both cases.

    ``precondition`` changes only the path, not the optimum: ``"diag"`` rescales each feature by its
    standard deviation, ``"gram"`` whitens with the Cholesky factor of the covariance (one Gram per
    layer, then 3-5x fewer iterations on correlated features), ``"none"`` plain L-BFGS. ``"auto"``
    (default) picks ``"gram"`` when N >= 4 D (the Gram then costs less than the iterations it saves)
    and ``"diag"`` otherwise. Data are centred implicitly (X is not copied unless its dtype differs).

    Args:
        X: ``[L, N, D]`` (or ``[N, D]``); y: class codes ``[N]`` in ``0..n_classes-1``.
    Returns:
        :class:`LinearFit` (``weight [L, D, K]``, ``bias [L, K]``, ``info["n_iter"|"converged"]``).

    >>> X = torch.randn(2, 200, 5); y = (X[0, :, 0] > 0).long()
    >>> fit = fit_logistic(X, y, C=10.0)
    >>> (fit.scores(X)[0].argmax(-1) == y).float().mean().item() > 0.9
    True
    """
    X, _ = _as_3d(X)
    L, N, D = X.shape
    y, K = _codes(y, N, n_classes)
    if K < 2:
        raise ValueError("logistic regression needs at least 2 classes")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    if precondition not in ("auto", "diag", "gram", "none"):
        raise ValueError(f"precondition must be 'auto', 'diag', 'gram' or 'none', got {precondition!r}")
    if precondition == "auto":
        precondition = "gram" if N >= 4 * D else "diag"
    X = X if X.dtype == dtype else X.to(dtype)
    lam = 1.0 / ((C / 2 if K == 2 else C) * N)
    mu64 = _layer_means(X)
    mu = mu64.to(dtype)
    h = 1.0 / K  # curvature of the softmax cross-entropy at uniform probabilities
    DK = D * K
    if precondition == "gram":
        G, _ = centered_gram(X, dtype=dtype, lower_only=True)  # row-major X: fast centring copies
        A = G.double() * (h / N)
        del G
        A.diagonal(dim1=-2, dim2=-1).add_(lam)
        R = _cholesky(A, "covariance + lambda I").transpose(1, 2).to(dtype)  # upper: R^T R = A
        del A
    elif precondition == "diag":
        R = (_layer_std(X, mu64) ** 2 * h + lam).sqrt().to(dtype)  # [L, D]
    else:
        R = None
    bscale = math.sqrt(h)
    y_col = y.view(1, N, 1)

    def unpack(theta: Tensor, layers: Tensor) -> tuple[Tensor, Tensor]:
        V = theta[:, :DK].view(-1, D, K)
        if R is None:
            W = V
        elif R.ndim == 2:
            W = V / R[layers].unsqueeze(-1)
        else:
            W = torch.linalg.solve_triangular(R[layers], V, upper=True)
        return W, theta[:, DK:] / bscale

    def fg(theta: Tensor, layers: Tensor):
        W, b = unpack(theta, layers)
        fs, gWs, gbs = [], [], []
        o = 0
        for a, e in _runs(layers):
            k = e - a
            Wr, br, mur = W[o:o + k], b[o:o + k], mu[a:e]
            shift = br - torch.bmm(mur.unsqueeze(1), Wr).squeeze(1)  # centred intercept -> raw
            logits = torch.baddbmm(shift.unsqueeze(1), X[a:e], Wr)  # [k, N, K]
            logp = torch.log_softmax(logits, dim=2)
            nll = -logp.gather(2, y_col.expand(k, N, 1)).sum((1, 2)) / N
            P = logp.exp_()  # residual (softmax - onehot) / N, [k, N, K]
            P.scatter_add_(2, y_col.expand(k, N, 1), torch.full((k, N, 1), -1.0, dtype=dtype))
            P /= N
            gb = P.sum(1)
            # X^T P computed as (P^T X)^T: reads row-major X without a transposed copy of it
            gW = torch.bmm(P.transpose(1, 2), X[a:e]).transpose(1, 2)
            gW += lam * Wr - mur.unsqueeze(2) * gb.unsqueeze(1)
            fs.append(nll + 0.5 * lam * (Wr * Wr).sum((1, 2)))
            gWs.append(gW)
            gbs.append(gb)
            o += k
        f, gW, gb = torch.cat(fs), torch.cat(gWs), torch.cat(gbs)
        gmax = torch.maximum(gW.abs().amax((1, 2)), gb.abs().amax(1))
        if R is None:
            gV = gW
        elif R.ndim == 2:
            gV = gW / R[layers].unsqueeze(-1)
        else:
            gV = torch.linalg.solve_triangular(R[layers].transpose(1, 2), gW, upper=False)
        return f, torch.cat([gV.reshape(-1, DK), gb / bscale], 1), gmax

    theta0 = torch.zeros(L, DK + K, dtype=dtype)
    # whitened (gram): the unit step is Newton-like at W = 0; otherwise scipy's first step 1 / ||g||
    first = torch.ones(L, dtype=dtype) if precondition == "gram" else None
    ftol = 64 * torch.finfo(dtype).eps
    theta, n_iter, converged = _lbfgs(fg, theta0, tol=tol, max_iter=max_iter, history=history, ftol=ftol,
                                      first_step=first)
    W, b = unpack(theta, torch.arange(L))
    bias = b - torch.bmm(mu.unsqueeze(1), W).squeeze(1)
    if not bool(converged.all()):
        warnings.warn(
            f"fit_logistic: layers {(~converged).nonzero().flatten().tolist()} did not reach tol={tol} in "
            f"{max_iter} iterations; raise max_iter, lower C, or standardise the features",
            RuntimeWarning, stacklevel=2,
        )
    return LinearFit(W.contiguous(), bias, info={"n_iter": n_iter, "converged": converged, "C": C,
                                                 "precondition": precondition})


# ----------------------------------------------------------------------------------------------
# The seed paper's recipe (batched Adam)
# ----------------------------------------------------------------------------------------------
def fit_seed_recipe(
    X: Tensor,
    y: Tensor | np.ndarray,
    *,
    n_classes: int | None = None,
    epochs: int = 250,
    lr: float = 5e-3,
    batch_size: int = 1024,
    seed: int = 0,
    layer_chunk: int | None = None,
) -> LinearFit:
    """mstools' reading of the seed paper's probe, every layer in one call: bias-free linear map on
    L2-normalised inputs, MSE onto ±1 one-hot targets, Adam(lr), mini-batches of ``batch_size``,
    ``epochs`` epochs.

    An interpretation, not a reproduction: the released 4-class MSE probe code does not run as
    released, and the released probe weights came from a notebook that regressed every one of the four
    outputs onto the class index (broadcast to all four columns) and read one column for all 24
    layers. The ±1 one-hot targets here are what a working 4-class MSE probe would fit. Note also that
    the released steering applies the probe fit on ``hidden_states[i - 1]`` at the output of layer
    ``i`` (:mod:`mstools.steering.seed`, ``seed_layer_shift``).

    Identical (up to float rounding) to fitting each layer alone with ``nn.Linear(D, K, bias=False)``,
    ``torch.optim.Adam`` and ``nn.MSELoss()``: the per-layer losses are summed (their gradients do not
    mix), Adam is element-wise, and every layer sees the same batches. Initial weights follow
    ``nn.Linear``'s default ``U(-1/sqrt(D), 1/sqrt(D))``, drawn as ``[L, K, D]`` from a generator seeded
    with ``seed``, which then draws one ``randperm(N)`` per epoch. Layers are stacked in chunks of
    ``layer_chunk`` (default: as many as fit in ~32 MB, so mini-batch gathers stay in cache; on CPU
    this is faster than one stack of every layer); results do not depend on the chunking.

    Returns :class:`LinearFit` with ``input_norm="l2"`` and a zero bias.

    >>> X = torch.randn(2, 64, 8); y = (X[0, :, 0] > 0).long()
    >>> fit = fit_seed_recipe(X, y, epochs=50, batch_size=16)
    >>> (fit.scores(X)[0].argmax(-1) == y).float().mean().item() > 0.8
    True
    """
    X, _ = _as_3d(X)
    L, N, D = X.shape
    y, K = _codes(y, N, n_classes)
    T = torch.nn.functional.one_hot(y, K).float() * 2 - 1
    step = layer_chunk or max(1, (32 * 2**20) // max(1, N * D * 4))
    weight = torch.empty(L, D, K)
    for a in range(0, L, step):
        e = min(L, a + step)
        gen = torch.Generator().manual_seed(seed)
        W0 = (torch.rand(L, K, D, generator=gen) * 2 - 1) / math.sqrt(D)
        Xn = X[a:e].float()
        Xn = Xn / Xn.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        W = W0[a:e].transpose(1, 2).contiguous().requires_grad_()
        opt = torch.optim.Adam([W], lr=lr)
        with torch.enable_grad():
            for _ in range(epochs):
                perm = torch.randperm(N, generator=gen)
                for i in range(0, N, batch_size):
                    idx = perm[i:i + batch_size]
                    pred = torch.bmm(Xn.index_select(1, idx), W)
                    loss = ((pred - T[idx]) ** 2).mean((1, 2)).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        weight[a:e] = W.detach()
    return LinearFit(weight, torch.zeros(L, K), input_norm="l2",
                     info={"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed})


# ----------------------------------------------------------------------------------------------
# Metrics (batched over layers; match scikit-learn's definitions)
# ----------------------------------------------------------------------------------------------
def accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Fraction correct. ``y_true [N]``, ``y_pred [L, N]`` (or ``[N]``) -> ``[L]`` float64."""
    y_pred = y_pred if y_pred.ndim == 2 else y_pred.unsqueeze(0)
    return (y_pred == y_true.unsqueeze(0)).double().mean(1)


def f1_macro(y_true: Tensor, y_pred: Tensor, n_classes: int) -> Tensor:
    """Macro-F1 over the classes present in ``y_true`` or ``y_pred`` (``sklearn.metrics.f1_score(
    average="macro")``; a class with no true and no predicted rows is left out, 0/0 counts as 0).
    ``y_true [N]``, ``y_pred [L, N]`` -> ``[L]`` float64."""
    y_pred = y_pred if y_pred.ndim == 2 else y_pred.unsqueeze(0)
    Lr = y_pred.shape[0]
    idx = (y_true.unsqueeze(0) * n_classes + y_pred) + torch.arange(Lr).unsqueeze(1) * n_classes**2
    cm = torch.bincount(idx.flatten(), minlength=Lr * n_classes**2).view(Lr, n_classes, n_classes).double()
    tp = cm.diagonal(dim1=1, dim2=2)
    denom = cm.sum(2) + cm.sum(1)  # 2 tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    present = denom > 0
    return (f1 * present).sum(1) / present.sum(1).clamp_min(1)


def r2(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """R² averaged uniformly over output columns (``sklearn.metrics.r2_score``, constant columns:
    1 if predicted exactly else 0). ``y_true [N, C]`` or ``[N]``; ``y_pred [L, N, C]``, ``[N, C]``, or
    ``[L, N]`` / ``[N]`` for a 1-D target -> ``[L]`` float64."""
    yt = y_true.double()
    yt = yt.unsqueeze(1) if yt.ndim == 1 else yt
    yp = y_pred.double()
    if yp.ndim == 1:  # [N]
        yp = yp.view(1, -1, 1)
    elif yp.ndim == 2:  # [L, N] for a 1-D target, else [N, C]
        yp = yp.unsqueeze(-1) if y_true.ndim == 1 else yp.unsqueeze(0)
    ss_res = ((yp - yt.unsqueeze(0)) ** 2).sum(1)
    ss_tot = ((yt - yt.mean(0)) ** 2).sum(0).unsqueeze(0)
    per = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300),
                      torch.where(ss_res == 0, torch.ones_like(ss_res), torch.zeros_like(ss_res)))
    return per.mean(1)


# ----------------------------------------------------------------------------------------------
# Splits and controls
# ----------------------------------------------------------------------------------------------
def group_split(
    groups: Sequence | np.ndarray,
    strata: Sequence | np.ndarray | None = None,
    test_size: float = 0.25,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows **by clip**: every clip goes wholly to train or to test -> ``(train_rows, test_rows)``.

    With ``strata`` (a label per row; a clip's stratum is the label of its first row), each stratum's
    clips are split separately: ``round(test_size * n)`` to test, at least 1 and at most ``n - 1`` when
    the stratum has 2 or more clips (a single-clip stratum stays in train).

    >>> tr, te = group_split(["a", "a", "b", "b", "c", "c", "d", "d"], test_size=0.5, seed=0)
    >>> len(tr), len(te)
    (4, 4)
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    groups = np.asarray(groups)
    clips, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    G = len(clips)
    if G < 2:
        raise ValueError(f"need at least 2 clips to split by clip, got {G}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(G, dtype=bool)
    if strata is None:
        order = rng.permutation(G)
        n_test = min(G - 1, max(1, int(round(test_size * G))))
        is_test[order[:n_test]] = True
    else:
        strata = np.asarray(strata)
        if len(strata) != len(groups):
            raise ValueError(f"strata has {len(strata)} rows, groups has {len(groups)}")
        clip_stratum = strata[first]
        _, s_inv = np.unique(clip_stratum, return_inverse=True)
        for s in range(s_inv.max() + 1):
            members = np.flatnonzero(s_inv == s)
            n = len(members)
            if n < 2:
                continue
            k = min(n - 1, max(1, int(round(test_size * n))))
            is_test[rng.permutation(members)[:k]] = True
    row_test = is_test[inv]
    return np.flatnonzero(~row_test), np.flatnonzero(row_test)


def shuffle_by_clip(
    values: Sequence | np.ndarray, groups: Sequence | np.ndarray, seed: int = 0
) -> np.ndarray:
    """Permute labels across clips, keeping clips intact (the shuffled-label control).

    Clips are permuted; row j of clip i takes the label of row ``j mod n`` of the clip it is mapped to,
    so clip-level labels move as a whole and within-clip structure is kept.

    >>> out = shuffle_by_clip(["x", "x", "y", "y"], [0, 0, 1, 1], seed=3).tolist()
    >>> out in (["x", "x", "y", "y"], ["y", "y", "x", "x"])
    True
    """
    values = np.asarray(values)
    groups = np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(inv.max() + 2))
    rows_of = [order[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]
    perm = np.random.default_rng(seed).permutation(len(rows_of))
    out = values.copy()
    for k, dst in enumerate(rows_of):
        src = rows_of[perm[k]]
        out[dst] = values[src[np.arange(len(dst)) % len(src)]]
    return out


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------
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
    mean = _layer_means(Xtr)
    std = _layer_std(Xtr, mean)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for X in (Xtr,) if Xte is None else (Xtr, Xte):
        X -= mean.to(X.dtype).unsqueeze(1)
        X /= std.to(X.dtype).unsqueeze(1)
    return mean, std


def _fit(method: str, X: Tensor, t_values: np.ndarray, kind: str, n_classes: int, opts: Mapping) -> LinearFit:
    if kind == "continuous" or method == "ridge":
        Y = (torch.as_tensor(t_values, dtype=torch.float64) if kind == "continuous"
             else torch.nn.functional.one_hot(torch.as_tensor(t_values), n_classes).double())
        return fit_ridge(X, Y, **opts)
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


def _options(options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in _DEFAULT_OPTIONS.items()}
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
    directions (see :mod:`mstools.directions`). Use :func:`probe_sweep` to *measure* probes.

    Features as in :func:`probe_sweep` (a single feature set). ``standardize`` z-scores features for
    ridge/logistic (folded back: the returned weights act on raw activations).

    >>> X = torch.randn(60, 4); lab = pd.DataFrame({"clip": range(60), "g": ["a", "b", "c"] * 20})
    >>> fit_probes({"blocks.3.hook_resid_post": X}, lab, "g")["blocks.3.hook_resid_post"].weight.shape
    torch.Size([4, 3])
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    sets = _as_feature_sets(features, hooks, "trained")
    if len(sets) != 1:
        raise ValueError(f"fit_probes takes one feature set, got models {list(sets)}")
    fset = next(iter(sets.values()))
    t = _target(labels, target, continuous)
    opts = _options(options)
    out: dict[str, Probe] = {}
    for names in _width_groups(fset):
        X, _ = stack_features(fset, names)
        X = X[:, t.rows].contiguous() if len(t.rows) != X.shape[1] else X
        m = "ridge" if t.kind == "continuous" else method
        mean = std = None
        if standardize and m != "seed":
            mean, std = _standardize(X, None)
        fit = _fit(m, X, t.values, t.kind, len(t.classes or [0]), opts[m])
        for l, h in enumerate(names):
            W, b = _raw_space(fit, l, mean, std)
            out[h] = Probe(h, target, m, W, b, t.classes, fit.input_norm,
                           meta={"n_train": len(t.rows), "standardized": mean is not None,
                                 "options": opts[m]})
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
    sets = _as_feature_sets(features, hooks, "trained")
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
                                             standardize, opts)
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


def _sweep_one(X, names, rtr, rte, ytr, yte, t: _Target, K, methods, standardize, opts) -> dict:
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
            fit = _fit(m, Xtr, ytr, t.kind, K, opts[m])
            out[m] = (_score(m, fit, Xte, yte, t.kind, K), fit, mean, std)
    return {m: out[m] for m in methods}


def summarize(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("accuracy", "f1_macro", "r2"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean and a t-interval over seeds for each (model, hook, layer, target, method, control).

    Columns: the keys, ``n_seeds``, and ``{metric}_mean``, ``{metric}_lo``, ``{metric}_hi`` for each metric
    (``mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n)``; NaN bounds with a single seed).

    >>> df = pd.DataFrame({"hook": ["h"] * 3, "seed": [0, 1, 2], "accuracy": [0.5, 0.6, 0.7]})
    >>> summarize(df, ["accuracy"])[["accuracy_mean", "n_seeds"]].values.round(2).tolist()
    [[0.6, 3.0]]
    """
    from scipy.stats import t as student_t

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
        out[f"{m}_mean"], out[f"{m}_lo"], out[f"{m}_hi"] = mean, mean - half, mean + half
    return out
