"""Fitted probes: L linear maps fitted together, and one probe at one hook in raw activation space."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = ["LinearFit", "Probe"]


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


