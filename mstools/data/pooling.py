"""Pooling cached activations over time: one vector per clip, per window, or per frame.

Activations arrive per hook as ``acts [B, S, ...]`` (``...`` = ``D``, or ``H, D/H`` for
``attn.hook_z``) together with ``steps: LongTensor [S]``, the absolute LM input step of each position.
Time comes from ``steps`` (never from the tensor index) through :mod:`mstools.core.timeline`:

- ``"mean"``   mean over every step, or over the steps whose ``seconds_of_step`` lies in
  ``window = (t0, t1)`` when a window is given                                   -> ``[B, ...]``
- ``"window"`` mean over the steps whose time lies in ``[t0, t1)`` (window required) -> ``[B, ...]``
- ``"last"``   the last step (the largest step, inside the window if one is given) -> ``[B, ...]``
- ``"frame"``  one row per audio frame, at the step that completes it
  (``timeline.frame_steps``: frame ``f`` -> step ``f + K - 1``)                   -> ``[B, F, ...]``

Example (K = 4 codebooks, 10 frames per second, 12 steps = 9 frames):

>>> import torch
>>> acts, steps = torch.randn(2, 12, 8), torch.arange(12)
>>> pool(acts, steps, "mean").shape
torch.Size([2, 8])
>>> pool(acts, steps, "window", frame_rate=10.0, window=(0.5, 1.0)).shape   # steps 5..9
torch.Size([2, 8])
>>> pool(acts, steps, "frame", num_codebooks=4).shape                       # frames 0..8
torch.Size([2, 9, 8])
>>> Pooling("window", (0.5, 1.0)).to_json()
{'how': 'window', 'window': [0.5, 1.0]}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from mstools.core import timeline

__all__ = ["POOLING_MODES", "Pooling", "pool", "as_pooling"]

POOLING_MODES: tuple[str, ...] = ("mean", "window", "last", "frame")


def _check_window(window: Any) -> tuple[float, float] | None:
    """Return ``window`` as a float pair ``(t0, t1)`` with ``t0 < t1``, or ``None``."""
    if window is None:
        return None
    try:
        t0, t1 = (float(t) for t in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (t0, t1) of seconds, got {window!r}") from None
    if math.isnan(t0) or math.isnan(t1) or not t0 < t1:
        raise ValueError(f"window must satisfy t0 < t1 (seconds, [t0, t1)), got {window!r}")
    return (t0, t1)


def _check_how(how: str, window: tuple[float, float] | None) -> None:
    if how not in POOLING_MODES:
        raise ValueError(f"unknown pooling {how!r}; use one of {', '.join(POOLING_MODES)}")
    if how == "window" and window is None:
        raise ValueError("pooling 'window' needs window=(t0, t1) in seconds")
    if how == "frame" and window is not None:
        raise ValueError("pooling 'frame' keeps every frame and takes no window; "
                         "select frames from the stored 'frame' column instead")


def pool(acts: torch.Tensor, steps: torch.Tensor, how: str, *, num_codebooks: int | None = None,
         frame_rate: float | None = None,
         window: tuple[float, float] | None = None) -> torch.Tensor:
    """Pool ``acts [B, S, ...]`` over its time axis S.

    Args:
        acts: activations ``[B, S, ...]`` of one hook (one CFG branch).
        steps: LongTensor ``[S]``, absolute input step of each position of ``acts``.
        how: ``"mean"``, ``"window"``, ``"last"`` or ``"frame"`` (see the module docstring).
        num_codebooks: K; needed by ``"frame"``.
        frame_rate: frames per second; needed whenever a window is given.
        window: ``(t0, t1)`` in seconds, half-open ``[t0, t1)``; a step's time is
            ``timeline.seconds_of_step(step, frame_rate)``.

    Returns:
        ``[B, ...]`` (``"mean"``, ``"window"``, ``"last"``) or ``[B, F, ...]`` (``"frame"``), in the
        dtype of ``acts`` (means are accumulated in at least float32).

    Raises:
        ValueError: unknown mode, missing ``frame_rate``/``num_codebooks``, a window holding no
            step, or ``steps`` not matching the S axis.

    Example:
        >>> acts = torch.arange(6.0).reshape(1, 3, 2)      # steps 0, 1, 2
        >>> pool(acts, torch.arange(3), "last")
        tensor([[4., 5.]])
    """
    window = _check_window(window)
    _check_how(how, window)
    if acts.dim() < 2:
        raise ValueError(f"acts must be [B, S, ...], got shape {tuple(acts.shape)}")
    steps = torch.as_tensor(steps, dtype=torch.long).reshape(-1)
    if steps.numel() != acts.shape[1]:
        raise ValueError(f"steps has {steps.numel()} entries but acts has S={acts.shape[1]} "
                         f"positions (shape {tuple(acts.shape)}); pass one step per position")
    if steps.numel() == 0:
        raise ValueError("acts has no time steps (S=0); nothing to pool")

    if how == "frame":
        if num_codebooks is None:
            raise ValueError("pooling 'frame' needs num_codebooks (K) to align frames to steps")
        return acts[:, timeline.frame_steps(steps, num_codebooks)]

    positions = torch.arange(steps.numel())
    if window is not None:
        if frame_rate is None:
            raise ValueError("a window in seconds needs frame_rate (frames per second)")
        t = timeline.seconds_of_step(steps.double(), float(frame_rate))
        inside = (t >= window[0]) & (t < window[1])
        if not bool(inside.any()):
            raise ValueError(
                f"window [{window[0]}, {window[1]}) s holds no cached step: the steps cover "
                f"[{float(t.min()):.4g}, {float(t.max()):.4g}] s at {frame_rate} frames/s; "
                f"choose a window inside that range")
        positions = positions[inside]

    if how == "last":
        return acts[:, positions[steps[positions].argmax()]]
    selected = acts if window is None else acts[:, positions]  # no copy of the whole clip
    acc = torch.promote_types(acts.dtype, torch.float32) if acts.is_floating_point() else torch.float32
    out = selected.to(acc).mean(dim=1)
    return out.to(acts.dtype) if acts.is_floating_point() else out


@dataclass(frozen=True)
class Pooling:
    """How a store pools time: a mode and an optional window in seconds (serialisable to JSON).

    Example:
        >>> p = Pooling("mean", window=(0.0, 2.0))
        >>> Pooling.from_json(p.to_json()) == p
        True
        >>> p(torch.zeros(1, 30, 4), torch.arange(30), frame_rate=10.0).shape
        torch.Size([1, 4])
    """

    how: str = "mean"
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        window = _check_window(self.window)
        _check_how(self.how, window)
        object.__setattr__(self, "window", window)

    @property
    def per_frame(self) -> bool:
        """True when each clip gives one row per frame (``how == "frame"``)."""
        return self.how == "frame"

    def __call__(self, acts: torch.Tensor, steps: torch.Tensor, *, num_codebooks: int | None = None,
                 frame_rate: float | None = None) -> torch.Tensor:
        """Apply :func:`pool` with this mode and window."""
        return pool(acts, steps, self.how, num_codebooks=num_codebooks, frame_rate=frame_rate,
                    window=self.window)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; an infinite window end is written as ``null``."""
        window = None
        if self.window is not None:
            window = [None if math.isinf(t) else t for t in self.window]
        return {"how": self.how, "window": window}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Pooling":
        """Inverse of :meth:`to_json` (``null`` window ends read back as -inf / +inf)."""
        if not isinstance(data, Mapping) or "how" not in data:
            raise ValueError(f"a pooling entry needs a 'how' field, got {data!r}")
        window = data.get("window")
        if window is not None:
            if len(window) != 2:
                raise ValueError(f"a pooling window has two ends, got {window!r}")
            window = (-math.inf if window[0] is None else float(window[0]),
                      math.inf if window[1] is None else float(window[1]))
        return cls(str(data["how"]), window)


def as_pooling(pooling: "Pooling | str") -> Pooling:
    """A :class:`Pooling` from itself or a mode name (``"mean"``, ``"last"``, ``"frame"``).

    >>> as_pooling("mean").how
    'mean'
    """
    if isinstance(pooling, Pooling):
        return pooling
    if isinstance(pooling, str):
        return Pooling(pooling)
    raise TypeError(f"pooling must be a Pooling or a mode name, got {pooling!r}")
