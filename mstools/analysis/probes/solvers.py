"""Probe solvers for every layer at once: ridge (closed form), logistic (batched L-BFGS), the seed
paper's recipe (batched Adam). Inputs ``X [L, N, D]``; outputs :class:`~mstools.analysis.probes.fits.LinearFit`."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

Tensor = torch.Tensor

from mstools.analysis.probes.features import as_3d, chunks, layer_means, layer_std, runs
from mstools.analysis.probes.fits import LinearFit

__all__ = ["centered_gram", "fit_ridge", "fit_logistic", "fit_seed_recipe", "LOGISTIC_BLOCK_BYTES"]

#: Features per block of layers that :func:`fit_logistic` optimises together (bytes): small enough to
#: stay in cache between the two passes of an iteration.
LOGISTIC_BLOCK_BYTES = 16 * 2**20


def _centered_chunks(X: Tensor, dtype: torch.dtype, layer_chunk: int | None):
    """Yield ``(slice, Xc [l, N, D] centred copy in dtype, mean [l, D] float64)`` over layer chunks."""
    L, N, D = X.shape
    for sl in chunks(L, N, D, torch.empty((), dtype=dtype).element_size(), layer_chunk):
        mean = layer_means(X[sl])
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
    X, squeeze = as_3d(X)
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
    X, _ = as_3d(X)
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
    parts = (
        _centered_chunks(X, dtype, layer_chunk)
        if fit_intercept
        else ((sl, X[sl].to(dtype), torch.zeros(sl.stop - sl.start, D, dtype=torch.float64))
              for sl in chunks(L, N, D, torch.empty((), dtype=dtype).element_size(), layer_chunk))
    )
    for sl, Xc, mean in parts:
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
    layer_chunk: int | None = None,
) -> LinearFit:
    """Multinomial logistic regression with an L2 penalty, layers in blocks (batched L-BFGS).

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

    ``layer_chunk`` layers are optimised together (default: as many as fit in
    :data:`LOGISTIC_BLOCK_BYTES` of features, at least one): every iteration reads the block's features
    twice, and a block that stays in the CPU's cache is faster than streaming every layer
    from memory on each iteration.

    Args:
        X: ``[L, N, D]`` (or ``[N, D]``); y: class codes ``[N]`` in ``0..n_classes-1``.
    Returns:
        :class:`LinearFit` (``weight [L, D, K]``, ``bias [L, K]``, ``info["n_iter"|"converged"]``).

    >>> X = torch.randn(2, 200, 5); y = (X[0, :, 0] > 0).long()
    >>> fit = fit_logistic(X, y, C=10.0)
    >>> (fit.scores(X)[0].argmax(-1) == y).float().mean().item() > 0.9
    True
    """
    X, _ = as_3d(X)
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
    if layer_chunk is None:
        layer_chunk = max(1, LOGISTIC_BLOCK_BYTES // max(1, N * D * torch.finfo(dtype).bits // 8))
    if layer_chunk < 1:
        raise ValueError(f"layer_chunk must be >= 1, got {layer_chunk}")
    parts = [_logistic_block(X[a:a + layer_chunk], y, K, C, tol, max_iter, history, precondition, dtype)
             for a in range(0, L, layer_chunk)]
    W = torch.cat([p[0] for p in parts])
    bias = torch.cat([p[1] for p in parts])
    n_iter = torch.cat([p[2] for p in parts])
    converged = torch.cat([p[3] for p in parts])
    if not bool(converged.all()):
        warnings.warn(
            f"fit_logistic: layers {(~converged).nonzero().flatten().tolist()} did not reach tol={tol} in "
            f"{max_iter} iterations; raise max_iter, lower C, or standardise the features",
            RuntimeWarning, stacklevel=2,
        )
    return LinearFit(W, bias, info={"n_iter": n_iter, "converged": converged, "C": C,
                                    "precondition": parts[0][4]})


def _logistic_block(X: Tensor, y: Tensor, K: int, C: float, tol: float, max_iter: int, history: int,
                    precondition: str, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """:func:`fit_logistic` on one block of layers: ``(weight, bias, n_iter, converged, precondition)``."""
    L, N, D = X.shape
    X = X if X.dtype == dtype else X.to(dtype)
    lam = 1.0 / ((C / 2 if K == 2 else C) * N)
    mu64 = layer_means(X)
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
        R = (layer_std(X, mu64) ** 2 * h + lam).sqrt().to(dtype)  # [L, D]
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
        for a, e in runs(layers):
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
    return W.contiguous(), bias, n_iter, converged, precondition


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
    X, _ = as_3d(X)
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


