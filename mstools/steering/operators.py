"""Steering operators: how a direction changes an activation, as small typed callables.

Every operator is called as ``op(h, v, a) -> Tensor``:

- ``h``: the activation, ``[..., D]`` (e.g. ``[B, S, D]`` for resid/attn/mlp hooks), or
  ``[..., H, Dh]`` for ``attn.hook_z`` with a ``[H, Dh]`` direction. Norms and projections are taken
  over the last ``v.dim()`` axes (one vector per row: ``D``, or all heads' ``H * Dh``).
- ``v``: the direction, ``[D]`` or ``[H, Dh]``, shaped like the trailing axes of ``h``. It is cast to
  ``h``'s device; the arithmetic runs in float32 (float64 if ``h`` is float64) and the result is cast
  back to ``h.dtype``, so fp16/bf16 activations neither overflow in norms nor change dtype.
- ``a``: the strength per row, already multiplied by the schedule weight: a number or a tensor that
  broadcasts to ``h[..., :1]`` (``h[..., :1, :1]`` for ``[H, Dh]`` directions), e.g. ``[B, S, 1]``
  or ``[S, 1]``. Its trailing ``v.dim()`` axes must be 1 (this catches an ``[S, 1]`` meant for
  ``[B, S, D]`` being used on ``[B, S, H, Dh]``).

Guarantees: rows with ``a == 0`` come back bit-identical to ``h`` (all-zero ``a`` returns ``h``
itself); ``h`` is never modified in place; the output has ``h``'s shape and dtype.

>>> import torch
>>> h = torch.tensor([[3.0, 4.0]])
>>> v = torch.tensor([1.0, 0.0])
>>> add_operator()(h, v, 2.0)
tensor([[5., 4.]])
>>> ablate_operator()(h, v, 1.0)
tensor([[0., 4.]])
>>> set_projection_operator(target=-1.0)(h, v, 1.0)
tensor([[-1.,  4.]])
>>> seed_mix_operator()(h, v, 1.0)          # (h + 1 * ||h|| * v) / 2 = ([3, 4] + [5, 0]) / 2
tensor([[4., 2.]])
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Protocol, Union

import torch
from torch import Tensor

__all__ = [
    "Operator",
    "OperatorFn",
    "add_operator",
    "seed_mix_operator",
    "ablate_operator",
    "set_projection_operator",
    "get_operator",
    "OPERATORS",
]

Strength = Union[float, Tensor]


class OperatorFn(Protocol):
    """What a hook calls: ``op(h, v, a) -> Tensor`` (see the module docstring for shapes)."""

    def __call__(self, h: Tensor, v: Tensor, a: Strength) -> Tensor: ...


# A kernel computes the steered activation in the working dtype; dims are the reduced axes.
_Kernel = Callable[[Tensor, Tensor, Union[float, Tensor], tuple], Tensor]


@dataclass(frozen=True)
class Operator:
    """A named steering operator: shared checks + identity at ``a == 0`` around a formula.

    Build one with the factories (:func:`add_operator`, ...). ``repr`` names it and its
    parameters, e.g. ``set_projection(target=0.0)``, for result tables.
    """

    name: str
    kernel: _Kernel = field(repr=False)
    params: tuple = ()
    unit_direction: bool = False  # the formula uses v / ||v||
    min_strength: float | None = None  # strengths must be > this

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.name}({args})"

    def __call__(self, h: Tensor, v: Tensor, a: Strength) -> Tensor:
        if not isinstance(h, Tensor) or not h.is_floating_point():
            raise TypeError(f"{self!r}: h must be a floating-point tensor, got "
                            f"{getattr(h, 'dtype', type(h).__name__)}")
        if not isinstance(v, Tensor):
            raise TypeError(f"{self!r}: v must be a tensor, got {type(v).__name__}")
        nd = v.dim()
        if nd < 1 or h.dim() < nd or tuple(h.shape[-nd:]) != tuple(v.shape):
            raise ValueError(f"{self!r}: direction of shape {tuple(v.shape)} does not match the "
                             f"trailing axes of the activation {tuple(h.shape)}")
        a, total, lowest = _as_strength(a, h, nd, self)
        if total == 0.0:
            return h  # exactly the identity, no copy
        if not math.isfinite(total):
            raise ValueError(f"{self!r}: strength contains NaN or inf")
        if self.min_strength is not None and lowest <= self.min_strength:
            raise ValueError(f"{self!r}: strength must be > {self.min_strength:g}, got {lowest:g}")
        work = torch.float64 if h.dtype == torch.float64 else torch.float32
        hw = h if h.dtype == work else h.to(work)
        vw = v if (v.dtype == work and v.device == h.device) else v.to(device=h.device, dtype=work)
        if self.unit_direction:
            n = torch.linalg.vector_norm(vw)
            if float(n) == 0.0:
                raise ValueError(f"{self!r}: the direction is all zeros, it has no direction to use")
            vw = vw / n
        if isinstance(a, Tensor) and a.dtype != work:
            a = a.to(work)
        out = self.kernel(hw, vw, a, tuple(range(-nd, 0)))
        if out.dtype != h.dtype:
            out = out.to(h.dtype)
        if isinstance(a, Tensor):  # rows with a == 0 keep h's exact bits
            out = torch.where(a == 0, h, out)
        return out


def _as_strength(a: Strength, h: Tensor, nd: int, op: Operator) -> tuple[float | Tensor, float, float]:
    """``(a, sum |a|, min a)``; ``a`` a float, or a tensor on h's device whose shape broadcasts to
    ``h.shape[:-nd] + (1,) * nd``. One device sync for a tensor."""
    if isinstance(a, numbers.Real) and not isinstance(a, bool):
        a = float(a)
        return a, abs(a), a
    if not isinstance(a, Tensor):
        raise TypeError(f"{op!r}: strength must be a number or a tensor, got {type(a).__name__}")
    if a.is_complex() or a.dtype == torch.bool:
        raise TypeError(f"{op!r}: strength must be real, got a tensor of {a.dtype}")
    if a.dim() == 0:
        return _as_strength(a.item(), h, nd, op)
    if (a.dim() > h.dim() or any(sa != 1 for sa in a.shape[-nd:])
            or any(sa not in (1, sh) for sa, sh in zip(reversed(a.shape), reversed(h.shape)))):
        raise ValueError(f"{op!r}: strength of shape {tuple(a.shape)} must broadcast to one value "
                         f"per row of h {tuple(h.shape)}, e.g. {tuple(h.shape[:-nd]) + (1,) * nd}")
    if a.device != h.device:
        a = a.to(h.device)
    if not a.is_floating_point():
        a = a.float()
    if op.min_strength is None:
        return a, float(a.abs().sum()), 0.0
    total, lowest = torch.stack((a.abs().sum(), a.min())).tolist()
    return a, total, lowest


# ---------------------------------------------------------------------------- kernels
def _add(h: Tensor, v: Tensor, a: Strength, dims: tuple) -> Tensor:
    return h + a * v


def _seed_mix(h: Tensor, v: Tensor, a: Strength, dims: tuple) -> Tensor:
    norm = torch.linalg.vector_norm(h, dim=dims, keepdim=True)
    return (h + a * norm * v) / (1 + a)


def _projection(h: Tensor, v: Tensor, dims: tuple) -> Tensor:
    return (h * v).sum(dim=dims, keepdim=True)


def _ablate(h: Tensor, v: Tensor, a: Strength, dims: tuple) -> Tensor:
    return h - a * _projection(h, v, dims) * v


def _set_projection(target: float) -> _Kernel:
    def kernel(h: Tensor, v: Tensor, a: Strength, dims: tuple) -> Tensor:
        return h + a * (target - _projection(h, v, dims)) * v

    return kernel


# ---------------------------------------------------------------------------- factories
def add_operator() -> Operator:
    """``h + a * v``: plain activation addition (ActAdd, difference-of-means steering).

    ``v`` is used as given. Pass a unit ``v`` and a strength already converted from "units of the
    mean activation norm at this hook" (``a = alpha * mean_norm``), so numbers compare across hooks.
    """
    return Operator("add", _add)


def seed_mix_operator() -> Operator:
    """The seed paper's ``(h + a * ||h|| * v̂) / (1 + a)``, ``||h||`` the L2 norm of each row.

    ``v`` is normalised to unit norm first (``v̂ = v / ||v||``), so the added term has the row's own
    norm and ``a`` is a mixing ratio (``a = 1``: half the row, half the direction at the row's norm).
    Needs ``a > -1``.

    This is the formula of the released code's hook, which applies it per token to the conditional
    rows only, on every 25th hook call (one counter for all steered layers) and with the probe of
    two layers earlier: use it with ``branch="cond"``, :func:`~mstools.steering.schedules.hook_calls`
    and :func:`~mstools.steering.seed.seed_vector` (all three: :func:`~mstools.steering.seed.seed_steering`).
    """
    return Operator("seed_mix", _seed_mix, unit_direction=True, min_strength=-1.0)


def ablate_operator() -> Operator:
    """``h - a * (h · v̂) v̂``: remove the component along ``v̂ = v / ||v||``.

    ``a = 1`` removes it fully, ``a = 0`` does nothing, values in between remove a fraction.
    """
    return Operator("ablate", _ablate, unit_direction=True)


def set_projection_operator(target: float = 0.0) -> Operator:
    """``h + a * (target - h · v̂) v̂``: move the component along ``v̂`` to ``target``.

    ``a = 1`` sets the projection to exactly ``target`` (in the activation's own units), ``a = 0``
    does nothing, values in between blend. ``target=0`` is :func:`ablate_operator`.
    """
    if isinstance(target, Tensor):
        target = target.item()
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not math.isfinite(target):
        raise ValueError(f"set_projection target must be a finite number, got {target!r}")
    target = float(target)
    return Operator("set_projection", _set_projection(target), params=(("target", target),),
                    unit_direction=True)


OPERATORS: dict[str, Callable[..., Operator]] = {
    "add": add_operator,
    "seed_mix": seed_mix_operator,
    "ablate": ablate_operator,
    "set_projection": set_projection_operator,
}


def get_operator(op: str | Operator | OperatorFn, **params: float) -> OperatorFn:
    """An operator from its name (``"add"``, ``"seed_mix"``, ``"ablate"``, ``"set_projection"``) or
    an operator/callable passed through unchanged.

    >>> get_operator("set_projection", target=2.0)
    set_projection(target=2.0)
    """
    if isinstance(op, str):
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}; choose one of {sorted(OPERATORS)}")
        return OPERATORS[op](**params)
    if params:
        raise ValueError("parameters can only be given with an operator name")
    if not callable(op):
        raise TypeError(f"an operator is a name or a callable op(h, v, a), got {type(op).__name__}")
    return op
