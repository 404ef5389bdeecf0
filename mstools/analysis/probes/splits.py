"""Splits by clip (rows of one clip never straddle train and test) and the shuffled-label control."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = ["group_split", "group_folds", "shuffle_by_clip"]


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


def group_folds(groups: Sequence | np.ndarray, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` folds of rows **by clip** (each clip in exactly one fold) -> list of row indices.

    >>> folds = group_folds(["a", "a", "b", "c", "d", "e"], k=3, seed=0)
    >>> sorted(np.concatenate(folds).tolist()), len(folds)
    ([0, 1, 2, 3, 4, 5], 3)
    """
    groups = np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    G = inv.max() + 1 if len(inv) else 0
    if not 2 <= k <= G:
        raise ValueError(f"need 2 <= k <= number of clips ({G}), got k={k}")
    fold_of_clip = np.empty(G, dtype=np.int64)
    fold_of_clip[np.random.default_rng(seed).permutation(G)] = np.arange(G) % k
    return [np.flatnonzero(fold_of_clip[inv] == f) for f in range(k)]


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


