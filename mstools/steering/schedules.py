"""Schedules: how much to steer at each position, as a function of time.

A schedule is called as ``w = schedule(seconds, steps)``:

- ``seconds``: float tensor ``[S]``, the time of each position, ``step / frame_rate``
  (see :mod:`mstools.core.timeline`; it comes from the step counter, never a tensor index);
- ``steps``: long tensor ``[S]``, the absolute input step of each position (S = 1 at every
  generation step);
- ``w``: float32 tensor ``[S]`` on ``seconds``' device, the weight that multiplies the strength.

Time boundaries are compared with a tolerance of 1 µs (``EPS``), far below any frame period, so a
step whose float32 time is 4.9999999 counts as being at 5.0 s.

Factories: :func:`constant`, :func:`window`, :func:`periodic`, :func:`decay`, :func:`crossfade`,
:func:`from_callable`, :func:`hook_calls`; :func:`as_schedule` turns ``None`` / a number / ``(t0, t1)``
/ a callable into a schedule. Schedules multiply (``window(5, None) * periodic(25)``: every 25th step
after 5 s) and have a readable ``repr`` for result tables.

The seed paper's released code does not steer every 25th *step*: its hooks steer on every 25th *call*,
counted by one counter that every steered layer increments and that starts at an offset.
:func:`hook_calls` counts the same way (one counter per schedule object, shared by every hook that uses
it); :func:`periodic` is a function of the step and equals it only in special cases (one steered
layer: ``periodic(25, phase=24)`` with ``offset=0`` under a decoder-only generate, phase 23 under
``MusicgenForConditionalGeneration.generate``; with several layers each layer gets its own phase).

>>> import torch
>>> steps = torch.arange(6)
>>> seconds = steps / 2.0                                  # frame rate 2 Hz
>>> window(1.0, 2.0)(seconds, steps)
tensor([0., 0., 1., 1., 0., 0.])
>>> periodic(every=3, phase=1)(seconds, steps)
tensor([0., 1., 0., 0., 1., 0.])
>>> w_a, w_b = crossfade(0.5, 2.0)
>>> w_b(seconds, steps)
tensor([0.0000, 0.0000, 0.3333, 0.6667, 1.0000, 1.0000])
>>> window(1.0, None) * 0.5
window(1.0, None) * constant(0.5)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "EPS",
    "constant",
    "window",
    "periodic",
    "decay",
    "crossfade",
    "from_callable",
    "as_schedule",
    "hook_calls",
    "HookCalls",
]

#: Tolerance (seconds) when comparing a position's time with a boundary.
EPS = 1e-6

_Fn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Schedule:
    """A weight per position: ``schedule(seconds [S], steps [S]) -> float32 [S]``.

    Made by the factories in this module; ``label`` is its ``repr``. Calling checks the inputs and
    that every weight is finite.
    """

    fn: _Fn = field(repr=False)
    label: str

    def __repr__(self) -> str:
        return self.label

    def __call__(self, seconds: Tensor, steps: Tensor) -> Tensor:
        seconds = torch.as_tensor(seconds)
        steps = torch.as_tensor(steps)
        if seconds.dim() != 1 or steps.dim() != 1 or seconds.shape != steps.shape:
            raise ValueError(f"{self!r}: seconds and steps must both be 1-d [S] tensors of the same "
                             f"length, got {tuple(seconds.shape)} and {tuple(steps.shape)}")
        if steps.is_floating_point() or steps.is_complex() or steps.dtype == torch.bool:
            raise TypeError(f"{self!r}: steps must be an integer tensor, got {steps.dtype}")
        w = self.fn(seconds.to(torch.float64), steps.to(torch.long))
        w = torch.as_tensor(w, dtype=torch.float64, device=seconds.device)
        if w.shape != seconds.shape:
            w = torch.broadcast_to(w, seconds.shape)
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"schedule {self!r} gave a NaN or infinite weight at steps "
                             f"{steps[~torch.isfinite(w)].tolist()}")
        return w.to(torch.float32)

    def __mul__(self, other: object) -> "Schedule":
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            other = constant(float(other))
        if not isinstance(other, Schedule):
            return NotImplemented
        f, g = self.fn, other.fn
        return Schedule(lambda t, s: f(t, s) * g(t, s), f"{self.label} * {other.label}")

    __rmul__ = __mul__


def _finite(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def _int(name: str, x: Any, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or int(x) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def constant(w: float = 1.0) -> Schedule:
    """The same weight ``w`` everywhere (``constant(1.0)``: steer always, fully)."""
    w = _finite("constant weight", w)
    return Schedule(lambda t, s: torch.full_like(t, w), f"constant({w!r})")


def window(t0: float, t1: float | None = None) -> Schedule:
    """1 for ``t0 <= seconds < t1``, 0 elsewhere; ``t1=None``: from ``t0`` to the end.

    >>> window(5.0)
    window(5.0, None)
    """
    t0 = _finite("window start t0", t0)
    if t1 is not None:
        t1 = _finite("window end t1", t1)
        if t1 <= t0:
            raise ValueError(f"window end t1={t1} must be after its start t0={t0} "
                             f"(use t1=None for an open-ended window)")

    def fn(t: Tensor, s: Tensor) -> Tensor:
        inside = t >= t0 - EPS
        if t1 is not None:
            inside &= t < t1 - EPS
        return inside.to(t.dtype)

    return Schedule(fn, f"window({t0!r}, {t1!r})")


def periodic(every: int, phase: int = 0, width: int = 1) -> Schedule:
    """1 on steps where ``(step - phase) % every < width``, else 0 (counted in steps, not seconds).

    Not the seed paper's schedule, which counts hook calls (:func:`hook_calls`); for one steered layer
    and ``offset=0`` theirs is ``periodic(25, phase=24)`` under a decoder-only generate and
    ``periodic(25, phase=23)`` under ``MusicgenForConditionalGeneration.generate`` (which runs the
    decoder once more before the first step).
    """
    every = _int("periodic 'every'", every, 1)
    if isinstance(phase, bool) or not isinstance(phase, numbers.Integral):
        raise ValueError(f"periodic 'phase' must be an integer (a step), got {phase!r}")
    phase = int(phase)
    width = _int("periodic 'width'", width, 1)
    if width > every:
        raise ValueError(f"periodic width={width} cannot exceed every={every}")

    def fn(t: Tensor, s: Tensor) -> Tensor:
        return (torch.remainder(s - phase, every) < width).to(t.dtype)

    return Schedule(fn, f"periodic(every={every}, phase={phase}, width={width})")


def decay(gamma: float, floor: float = 0.0, start: float = 0.0, per: str = "second") -> Schedule:
    """Exponential fade from ``start``: 0 before ``start``, then ``max(gamma ** x, floor)``.

    ``x`` is the time since ``start``, in seconds (``per="second"``) or steps (``per="step"``, with
    ``start`` then in steps too). The weight is 1 at ``start`` and falls by ``gamma`` per unit.
    Before ``start`` it is 0, so ``decay(0.8, start=5.0)`` means "kick in at 5 s, then fade";
    for the emotion-steering peers' ``a(t) = a0 * g**t`` use ``start=0``.
    """
    gamma = _finite("decay gamma", gamma)
    if gamma <= 0:
        raise ValueError(f"decay gamma must be > 0 (weight = gamma ** time), got {gamma}")
    floor = _finite("decay floor", floor)
    start = _finite("decay start", start)
    if per not in ("second", "step"):
        raise ValueError(f"decay per must be 'second' or 'step', got {per!r}")

    def fn(t: Tensor, s: Tensor) -> Tensor:
        x = (t - start) if per == "second" else (s.to(t.dtype) - start)
        eps = EPS if per == "second" else 0.0
        w = torch.clamp(gamma ** x.clamp(min=0), min=floor)
        return torch.where(x >= -eps, w, torch.zeros_like(w))

    return Schedule(fn, f"decay(gamma={gamma!r}, floor={floor!r}, start={start!r}, per={per!r})")


def crossfade(t0: float, t1: float) -> tuple[Schedule, Schedule]:
    """A pair ``(w_a, w_b)`` with ``w_a + w_b = 1``: A alone before ``t0``, a linear ramp from A to
    B over ``[t0, t1)``, B alone from ``t1`` on.

    Steer with vector A under ``w_a`` and vector B under ``w_b`` to fade one into the other.
    """
    t0 = _finite("crossfade start t0", t0)
    t1 = _finite("crossfade end t1", t1)
    if t1 <= t0:
        raise ValueError(f"crossfade end t1={t1} must be after its start t0={t0}")

    def w_b(t: Tensor, s: Tensor) -> Tensor:
        return ((t - t0) / (t1 - t0)).clamp(0.0, 1.0)

    def w_a(t: Tensor, s: Tensor) -> Tensor:
        return 1.0 - w_b(t, s)

    return (Schedule(w_a, f"crossfade({t0!r}, {t1!r}).a"),
            Schedule(w_b, f"crossfade({t0!r}, {t1!r}).b"))


def from_callable(fn: Callable[[float], float], *, vectorized: bool = False,
                  name: str | None = None) -> Schedule:
    """Wrap a Python ``fn(seconds: float) -> float`` as a schedule.

    By default ``fn`` is called once per position with a plain float (fine for S = 1 during
    generation). ``vectorized=True`` calls it once with the whole float64 ``[S]`` seconds tensor.

    >>> import math
    >>> from_callable(lambda t: 0.5 * (1 + math.cos(t)), name="cosine")
    from_callable(cosine)
    """
    if not callable(fn):
        raise TypeError(f"from_callable needs a function of seconds, got {type(fn).__name__}")
    label = name or getattr(fn, "__name__", type(fn).__name__)

    def wrapped(t: Tensor, s: Tensor) -> Tensor:
        if vectorized:
            return torch.as_tensor(fn(t), dtype=t.dtype)  # type: ignore[arg-type]
        out = []
        for x in t.tolist():
            y = fn(x)
            if isinstance(y, Tensor):
                y = y.item()
            if isinstance(y, bool) or not isinstance(y, numbers.Real):
                raise TypeError(f"schedule function {label} must return a number, "
                                f"got {type(y).__name__} at t={x}")
            out.append(float(y))
        return torch.tensor(out, dtype=t.dtype)

    return Schedule(wrapped, f"from_callable({label})")


def as_schedule(x: Any) -> Schedule:
    """Turn a schedule-like value into a :class:`Schedule`.

    ``None`` -> ``constant(1.0)``; a number ``w`` -> ``constant(w)``; ``(t0, t1)`` ->
    ``window(t0, t1)`` (``t1`` may be ``None``); a :class:`Schedule` -> itself; any other callable
    -> ``from_callable(x)`` (a function of seconds).

    >>> as_schedule((5.0, None))
    window(5.0, None)
    """
    if x is None:
        return constant(1.0)
    if isinstance(x, Schedule):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return constant(float(x))
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"a tuple schedule is a window (t0, t1), got {len(x)} items: {x!r}")
        return window(*x)
    if callable(x):
        return from_callable(x)
    raise TypeError(f"cannot make a schedule from {type(x).__name__} {x!r}; pass None, a number, "
                    f"(t0, t1), a Schedule, or a function of seconds")


class HookCalls(Schedule):
    """A schedule that counts its own calls: see :func:`hook_calls`. Stateful (``count``)."""

    def __init__(self, every: int, offset: int):
        every = _int("hook_calls 'every'", every, 1)
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
            raise ValueError(f"hook_calls 'offset' must be an integer, got {offset!r}")
        state = {"count": int(offset)}

        def fn(t: Tensor, s: Tensor) -> Tensor:
            state["count"] += 1
            return torch.full_like(t, 1.0 if state["count"] % every == 0 else 0.0)

        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "every", every)
        object.__setattr__(self, "offset", int(offset))
        super().__init__(fn, f"hook_calls(every={every}, offset={int(offset)})")

    @property
    def count(self) -> int:
        """The counter: ``offset`` plus the calls so far."""
        return int(self._state["count"])

    def reset(self) -> "HookCalls":
        """Set the counter back to ``offset`` (e.g. before the next generation)."""
        self._state["count"] = self.offset
        return self

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return other is self


def hook_calls(every: int = 25, offset: int = 0) -> HookCalls:
    """The seed paper's schedule: 1 on every ``every``-th call, counting calls, else 0.

    Each call (one forward pass of one steered hook: a generation step, or a whole prompt or
    teacher-forced sequence at once) adds 1 to a counter that starts at ``offset``; the call is steered
    (weight 1 on all its positions) when the counter is a multiple of ``every``, as the released code's
    ``self.count += 1; if self.count % self.freq == 0`` (``freq`` = 25, ``count`` starting at
    ``offset``). **One counter per schedule object**, shared by every hook (layer) that uses it, as the
    released code shares ``self.count`` across layers; so the same object steers layer 3 and layer 5 on
    different steps. The counter persists across generations: make a new schedule or call
    :meth:`HookCalls.reset` before each one. A product with another schedule (``window(...) *
    hook_calls(25)``) still counts every call.

    >>> import torch
    >>> sched = hook_calls(every=3, offset=1)
    >>> [sched(torch.zeros(1), torch.zeros(1, dtype=torch.long)).item() for _ in range(6)]
    [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    """
    return HookCalls(every, offset)

