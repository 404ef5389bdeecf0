"""Probe metrics, batched over layers (scikit-learn's definitions)."""
from __future__ import annotations


import torch

Tensor = torch.Tensor

__all__ = ["accuracy", "f1_macro", "r2"]


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


