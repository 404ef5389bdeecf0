"""2-D views of activations: PCA (torch), UMAP (umap-learn, lazy import), and directions drawn as arrows.

>>> import torch
>>> X = torch.randn(100, 8) * torch.tensor([5.0, 1, 1, 1, 1, 1, 1, 0.1])
>>> p = pca(X, k=2)
>>> tuple(p.transform(X).shape), bool(p.explained_variance_ratio[0] > 0.5)
((100, 2), True)

Arrows (see :func:`direction_arrows`) start at ``transform(origin)`` and end at
``transform(origin + scale * v)``: exact for PCA (a linear map), an approximation for UMAP (the learned
embedding is non-linear and ``transform`` places new points near their neighbours in the fitted data).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["PCAResult", "UMAPResult", "pca", "umap_embed", "direction_arrows"]

Tensor = torch.Tensor


def _as_matrix(X: Tensor | np.ndarray) -> Tensor:
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X)
    if X.ndim != 2:
        X = X.reshape(X.shape[0], -1)
    return X


def _spread(X64: Tensor, mean: Tensor) -> float:
    """Root-mean-square distance of the rows to their mean (the default arrow length)."""
    return float(((X64 - mean) ** 2).sum(1).mean().sqrt())


@dataclass
class PCAResult:
    """Principal components of ``X [N, D]``.

    ``components [k, D]`` (orthonormal rows, float64), ``mean [D]``, ``explained_variance [k]``
    (unbiased, as scikit-learn), ``explained_variance_ratio [k]``, ``spread`` (RMS distance of rows to
    the mean).
    """

    components: Tensor
    mean: Tensor
    explained_variance: Tensor
    explained_variance_ratio: Tensor
    spread: float

    def transform(self, X: Tensor | np.ndarray) -> Tensor:
        """``X [M, D]`` -> coordinates ``[M, k]`` (float64)."""
        return (_as_matrix(X).double() - self.mean) @ self.components.T

    def project_vector(self, v: Tensor) -> Tensor:
        """A direction ``v [D]`` in component coordinates ``[k]`` (no centring: a displacement)."""
        return self.components @ torch.as_tensor(v).double().reshape(-1)


def pca(X: Tensor | np.ndarray, k: int = 2) -> PCAResult:
    """Exact PCA in torch (float64): eigendecomposition of the covariance when N >= D, SVD otherwise.

    Signs follow scikit-learn's ``svd_flip`` on the components: in each component the entry of largest
    magnitude is positive, so results are deterministic and comparable to ``sklearn.decomposition.PCA``.
    """
    X64 = _as_matrix(X).double()
    N, D = X64.shape
    if not 1 <= k <= min(N, D):
        raise ValueError(f"k must be in [1, min(N, D)] = [1, {min(N, D)}], got {k}")
    mean = X64.mean(0)
    Xc = X64 - mean
    total = float((Xc**2).sum() / max(N - 1, 1))
    if N >= D:
        evals, evecs = torch.linalg.eigh(Xc.T @ Xc)
        order = torch.argsort(evals, descending=True)[:k]
        comps = evecs[:, order].T
        var = evals[order].clamp_min(0) / max(N - 1, 1)
    else:
        _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
        comps = Vh[:k]
        var = S[:k] ** 2 / max(N - 1, 1)
    flip = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(flip == 0, torch.ones_like(flip), flip)
    ratio = var / total if total > 0 else torch.zeros_like(var)
    return PCAResult(comps.contiguous(), mean, var, ratio, _spread(X64, mean))


@dataclass
class UMAPResult:
    """A fitted UMAP: ``embedding [N, 2]`` (numpy float32), the ``reducer`` (``umap.UMAP``), and the
    data ``mean [D]`` and ``spread`` used as default arrow origin and length."""

    embedding: np.ndarray
    reducer: Any
    mean: Tensor
    spread: float

    def transform(self, X: Tensor | np.ndarray) -> Tensor:
        """Place new points ``[M, D]`` in the fitted embedding -> ``[M, 2]`` (approximate, see module doc)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.reducer.transform(_as_matrix(X).float().numpy())
        return torch.as_tensor(np.asarray(out), dtype=torch.float64)


def umap_embed(
    X: Tensor | np.ndarray,
    seed: int = 0,
    *,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    **kwargs: Any,
) -> UMAPResult:
    """UMAP of ``X [N, D]`` with ``random_state=seed`` (deterministic; umap then runs single-threaded).

    umap-learn is imported here, not at module import (it compiles with numba on first use: seconds).
    Extra keyword arguments go to ``umap.UMAP``.
    """
    try:
        import umap  # lazy: umap-learn compiles with numba on first import
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("umap_embed needs umap-learn: pip install umap-learn") from e
    X64 = _as_matrix(X).double()
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                        random_state=seed, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        emb = reducer.fit_transform(X64.float().numpy())
    mean = X64.mean(0)
    return UMAPResult(np.asarray(emb), reducer, mean, _spread(X64, mean))


def direction_arrows(
    space: PCAResult | UMAPResult,
    directions: Sequence[Any] | Mapping[str, Any],
    origins: Tensor | Sequence[Tensor] | Mapping[str, Tensor] | None = None,
    scale: float | None = None,
) -> pd.DataFrame:
    """Arrows of directions in a 2-D space -> DataFrame ``name, x0, y0, x1, y1`` (one row per direction).

    Each arrow starts at ``transform(origin)`` and ends at ``transform(origin + scale * v)`` with ``v`` the
    direction's unit vector. ``directions``: :class:`mstools.analysis.directions.Direction` objects (their
    ``name`` labels the row) or ``{name: Tensor [D]}``. ``origins``: one ``[D]`` point for all, one per
    direction (sequence, ``[M, D]`` tensor, or mapping by name / by ``Direction.label``), default the
    data mean (e.g. pass class means to start each arrow at its class). ``scale``: default the data's
    RMS distance to its mean. Exact for PCA; approximate for UMAP (see module doc).
    """
    if isinstance(directions, Mapping):
        items = [(str(k), torch.as_tensor(getattr(v, "vector", v))) for k, v in directions.items()]
        labels = [getattr(v, "label", str(k)) for k, v in directions.items()]
    else:
        items = [(d.name, d.vector) for d in directions]
        labels = [d.label for d in directions]
    if not items:
        return pd.DataFrame(columns=["name", "x0", "y0", "x1", "y1"])
    s = space.spread if scale is None else float(scale)
    if origins is None:
        O = space.mean.unsqueeze(0).expand(len(items), -1)
    elif isinstance(origins, Mapping):
        O = torch.stack([torch.as_tensor(origins[n] if n in origins else origins[lab]).double().reshape(-1)
                         for (n, _), lab in zip(items, labels)])
    else:
        if isinstance(origins, Tensor):
            O = origins.double()
        else:
            O = torch.stack([torch.as_tensor(o) for o in origins]).double()
        O = O.unsqueeze(0).expand(len(items), -1) if O.ndim == 1 else O
    V = torch.stack([v.double().reshape(-1) / v.double().norm() for _, v in items])
    if O.shape != V.shape:
        raise ValueError(f"origins have shape {tuple(O.shape)}, directions {tuple(V.shape)}")
    ends = space.transform(torch.cat([O, O + s * V]))
    start, end = ends[: len(items), :2], ends[len(items):, :2]
    return pd.DataFrame({"name": [n for n, _ in items], "x0": start[:, 0].numpy(), "y0": start[:, 1].numpy(),
                         "x1": end[:, 0].numpy(), "y1": end[:, 1].numpy()})
