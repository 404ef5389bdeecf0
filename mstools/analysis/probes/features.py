"""Probe inputs: every accepted form of features normalised, and stacked to ``X [L, N, D]``."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

Tensor = torch.Tensor

__all__ = ["stack_features", "as_feature_sets", "as_3d", "layer_means", "layer_std", "chunks", "runs"]

CHUNK_BYTES = 512 * 2**20  # centred copies of X are made this many bytes of layers at a time


def _is_store(obj: Any) -> bool:
    return hasattr(obj, "hooks") and callable(getattr(obj, "features", None)) and not isinstance(obj, Mapping)


def as_feature_sets(
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


def as_3d(X: Tensor) -> tuple[Tensor, bool]:
    if X.ndim == 2:
        return X.unsqueeze(0), True
    if X.ndim != 3:
        raise ValueError(f"X must be [L, N, D] or [N, D], got shape {tuple(X.shape)}")
    return X, False


def layer_means(X: Tensor, rows: int = 2048) -> Tensor:
    """Per-layer column means ``[L, D]`` float64: float32 (cascade) sums of row blocks, accumulated in
    float64 (~5e-8 relative error at N = 15,000; 15x faster than summing in float64 throughout)."""
    L, N, D = X.shape
    acc = torch.zeros(L, D, dtype=torch.float64)
    for r in range(0, N, rows):
        acc_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
        acc += X[:, r:r + rows].sum(1, dtype=acc_dtype).double()
    return acc / N


def layer_std(X: Tensor, mean: Tensor) -> Tensor:
    """Per-layer column standard deviations ``[L, D]`` (population, two-pass around ``mean``), float64."""
    L, N, D = X.shape
    acc = torch.zeros(L, D, dtype=torch.float64)
    m = mean.to(torch.float64 if X.dtype == torch.float64 else torch.float32).unsqueeze(1)
    for r in range(0, N, 2048):
        acc += ((X[:, r:r + 2048] - m) ** 2).sum(1).double()
    return (acc / N).sqrt()


def chunks(L: int, N: int, D: int, itemsize: int, layer_chunk: int | None) -> list[slice]:
    step = layer_chunk or max(1, CHUNK_BYTES // max(1, N * D * itemsize))
    return [slice(a, min(L, a + step)) for a in range(0, L, step)]


def runs(layers: Tensor) -> list[tuple[int, int]]:
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


