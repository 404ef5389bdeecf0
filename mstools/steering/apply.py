"""Attaching steering vectors to a HookedMusicGen: where, how strongly, when, on which CFG branch.

One setting is a :class:`Steering` (vector, strength, schedule, branch, operator, hooks/weights,
heads). It becomes one hook function per hook name, attached through ``model.hooks`` (always
scoped). A *sweep* puts many settings in one batched generate: row ``i`` of the batch follows its
own setting.

Strength units: with ``units="mean_norm"`` (default) a strength ``a`` on hook ``h`` adds
``a * mean_norm(h) * v/||v||`` for the ``add`` operator, where ``mean_norm(h)`` is the mean L2 norm of
that hook's activation over reference clips (:func:`mean_norms`), so numbers compare across hooks
and models. ``units="raw"`` uses ``a * v`` as given. Mixing operators (``seed_mix``, ``ablate``,
``set_projection``) take ``a`` as they define it.

Time comes from the model's step clock (audiocraft's streaming offset): a schedule gets
``seconds = step / frame_rate`` of every position; under CFG the rows ``[:B]`` are the conditional
branch and ``[B:]`` the unconditional one.

>>> with apply(vector, model, strength=2.0, schedule=(3.0, None), branch="cond"):
...     out = model.generate(["jazz"], duration=6, seed=0)
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from mstools.core.errors import BadInputError
from mstools.core.names import kind_of
from mstools.core.timeline import num_steps
from mstools.steering.operators import Operator, get_operator
from mstools.steering.schedules import Schedule, as_schedule
from mstools.steering.vector import SteeringVector, check_strength

__all__ = ["Steering", "steering_hooks", "apply", "Steerer", "sweep", "mean_norms", "SweepOutput",
           "Setting", "as_steerings", "describe", "check_reaches"]

BRANCHES = ("cond", "uncond", "both")
#: Largest push the add operator accepts, in units of the hook's mean activation norm.
MAX_RELATIVE_PUSH = 1000.0


@dataclasses.dataclass
class Steering:
    """One steering setting.

    Attributes:
        vector: the directions (per hook).
        strength: ``a`` (see module docstring for units). Finite number.
        schedule: weight over time: None (always), a number, ``(t0, t1)`` window in seconds, a
            :class:`~mstools.steering.schedules.Schedule`, or a function of seconds.
        branch: ``"cond"`` (the seed paper's choice), ``"uncond"`` or ``"both"`` CFG rows.
        operator: ``"add"``, ``"seed_mix"``, ``"ablate"``, ``"set_projection"`` or an operator.
        units: ``"mean_norm"`` or ``"raw"`` (for ``add``).
        hooks: restrict to these of the vector's hooks (names or globs); None = all.
        weights: per-hook multipliers (several layers with weights), default 1.
        heads: for ``attn.hook_z`` directions, only these heads are steered.
    """

    vector: SteeringVector
    strength: float = 1.0
    schedule: Any = None
    branch: str = "cond"
    operator: Any = "add"
    units: str = "mean_norm"
    hooks: Sequence[str] | str | None = None
    weights: Mapping[str, float] | None = None
    heads: Sequence[int] | None = None

    def describe(self) -> dict[str, Any]:
        """A flat row for result tables."""
        return dict(source=self.vector.source, strength=float(self.strength),
                    schedule=repr(as_schedule(self.schedule)), branch=self.branch,
                    operator=repr(get_operator(self.operator)), units=self.units,
                    hooks=",".join(self._hook_names_hint()), heads=None if self.heads is None
                    else ",".join(map(str, self.heads)))

    def _hook_names_hint(self) -> list[str]:
        if self.hooks is None:
            return self.vector.hooks
        return [self.hooks] if isinstance(self.hooks, str) else list(self.hooks)


def mean_norms(model: Any, hooks: Sequence[str], codes: torch.Tensor | None = None,
               prompts: Sequence[str | None] | None = None) -> dict[str, float]:
    """Mean L2 norm per position of each hook's activation over reference clips.

    Reference clips: ``codes`` if given; else ``model.reference_clips()`` when the model declares
    them (the testbed: procedural clips with their prompts); else two clips generated with seed 0
    from generic prompts. Conditional prompts matter: with the null condition, cross-attention
    outputs are ~0 (no attention bias), so their norm would be meaningless. For ``attn.hook_z`` the
    norm is over all heads (``H * Dh``). Values measured on the model's own reference clips are kept
    in ``model.mean_norm_cache`` (``model.clear_caches()`` forgets them).

    >>> norms = mean_norms(model, ["blocks.0.hook_resid_post"])          # {hook: float}
    """
    names = model.check_names(list(hooks))
    store: dict[str, float] = model.mean_norm_cache if codes is None else {}
    missing = [h for h in names if h not in store]
    if missing:
        if codes is None:
            if model.reference_clips is not None:
                codes, prompts = model.reference_clips()
            else:
                dur = min(2.0, float(model.max_duration))
                prompts = ["music", "a song"]
                codes = model.generate(prompts, duration=dur, seed=0, decode=False).codes
        if prompts is None:
            prompts = [None] * codes.shape[0]
        _, cache = model.run_with_cache(codes, prompts, names_filter=missing)
        for h in missing:
            x = cache[h].float()
            x = x.flatten(2) if kind_of(h) == "attn.hook_z" else x
            store[h] = float(torch.linalg.vector_norm(x, dim=-1).mean())
    return {h: store[h] for h in names}


@dataclasses.dataclass
class _Plan:
    """A setting resolved for one hook: direction, scale and the batch rows it owns."""

    vec: torch.Tensor
    scale: float
    strength: float
    schedule: Schedule
    branch: str
    op: Callable
    rows: Sequence[int] | None  # rows of the conditional batch (None: all)
    _index: dict = dataclasses.field(default_factory=dict, repr=False)

    def index(self, clock: Any, r: int) -> torch.Tensor:
        """Batch rows this plan edits in a forward call of ``r`` rows (cached per layout)."""
        key = (r, clock.cfg_batch)
        if key not in self._index:
            idx = torch.arange(r)[clock.rows(self.branch, r)]
            if self.rows is not None:
                half = clock.cfg_batch if clock.cfg_batch and r == 2 * clock.cfg_batch else r
                own = set(int(i) for i in self.rows)
                idx = idx[torch.tensor([int(i) % half in own for i in idx.tolist()],
                                       dtype=torch.bool)]
            self._index[key] = idx
        return self._index[key]


def _resolve(setting: Steering, model: Any, rows: Sequence[int] | None) -> dict[str, _Plan]:
    vec = setting.vector
    if not isinstance(vec, SteeringVector):
        raise TypeError(f"expected a SteeringVector, got {type(vec).__name__}")
    strength = check_strength(setting.strength)
    if isinstance(strength, torch.Tensor):
        raise TypeError("one setting takes one strength; for several, use sweep()")
    if setting.branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {setting.branch!r}")
    if setting.units not in ("mean_norm", "raw"):
        raise ValueError(f"units must be 'mean_norm' or 'raw', got {setting.units!r}")
    shapes = {h: model.hook_shape(h) for h in model.hook_names
              if h not in ("hook_logits", "ln_final.hook_normalized")}
    vec.check(model.fingerprint, shapes)
    names = vec.hooks
    if setting.hooks is not None:
        wanted = set(model.check_names(setting.hooks))
        names = [h for h in names if h in wanted]
        if not names:
            raise ValueError(f"none of the vector's hooks {vec.hooks} is among {setting.hooks!r}")
    weights = dict(setting.weights or {})
    for h in weights:
        if h not in names:
            raise ValueError(f"weight given for {h!r}, which this setting does not steer ({names})")
    op = get_operator(setting.operator)
    is_add = isinstance(op, Operator) and op.name == "add"
    norms = mean_norms(model, names) if (is_add and setting.units == "mean_norm") else {}
    schedule = as_schedule(setting.schedule)
    plans = {}
    for h in names:
        v = vec[h].to(model.device, torch.float32)
        if setting.heads is not None:
            if kind_of(h) != "attn.hook_z":
                raise ValueError(f"heads= applies to attn.hook_z directions, not {h!r}")
            mask = torch.zeros(v.shape[0], 1, device=v.device)
            for i in setting.heads:
                if not 0 <= int(i) < v.shape[0]:
                    raise ValueError(f"head {i} out of range: this model has {v.shape[0]} heads")
                mask[int(i)] = 1
            v = v * mask
        scale = strength * float(check_strength(weights.get(h, 1.0)))
        if h in norms:
            n = float(torch.linalg.vector_norm(v))
            if n == 0:
                raise ValueError(f"the direction for {h!r} is all zeros")
            v = v / n
            scale *= norms[h]
        if is_add:
            added = abs(scale) * float(torch.linalg.vector_norm(v))
            typical = norms.get(h) or mean_norms(model, [h])[h]
            if added > MAX_RELATIVE_PUSH * typical:
                raise BadInputError(
                    f"strength {strength:g} adds a vector of norm {added:.3g} at {h!r}, "
                    f"{added / typical:.3g} times the activation's mean norm ({typical:.3g}); beyond "
                    f"{MAX_RELATIVE_PUSH:g} times nothing but noise comes out. Lower the strength "
                    f"(in mean-norm units, 0.1-2 steer)")
        plans[h] = _Plan(v, scale, float(strength), schedule, setting.branch, op, rows)
    return plans


def check_reaches(settings: Sequence["Steering"], model: Any, duration: float) -> None:
    """Refuse a setting whose schedule is zero over the whole clip (e.g. a window that starts after
    the clip ends): it would steer nothing and look like a result."""
    steps = torch.arange(num_steps(max(1, int(round(duration * model.frame_rate))), model.num_codebooks))
    seconds = steps.double() / model.frame_rate
    for s in settings:
        schedule = as_schedule(s.schedule)
        if repr(schedule).startswith("constant("):
            continue
        if not bool(schedule(seconds, steps).any()):
            raise BadInputError(f"the schedule {schedule!r} of the steering from {s.vector.source!r} is "
                                f"zero over the whole {duration:g} s clip (steps 0-{int(steps[-1])}): it "
                                f"would steer nothing; move its window inside the clip")


def _hook_fn(plans: list[_Plan]) -> Callable:
    def steer(x: torch.Tensor, hook: Any) -> torch.Tensor:
        clock = hook.clock
        r, s = x.shape[0], x.shape[1]
        seconds, steps = clock.seconds, clock.steps
        for p in plans:
            w = p.schedule(seconds, steps).to(x.device)
            if p.scale == 0 or not bool(w.any()):
                continue
            idx = p.index(clock, r)
            if len(idx) == 0:
                continue
            a = torch.zeros(r, s, device=x.device)
            a[idx] = p.scale * w
            x = p.op(x, p.vec, a.view(r, s, *([1] * p.vec.dim())))
            if not bool(torch.isfinite(x).all()):
                raise BadInputError(f"steering at {hook.name!r} with strength {p.strength:g} made the "
                                    f"activation infinite or NaN; lower the strength (it is in units "
                                    f"of the hook's mean norm: try values around 0.1-2)")
        return x
    return steer


def steering_hooks(model: Any, settings: Sequence[tuple[Steering, Sequence[int] | None]]) -> list:
    """``(name, fn)`` hooks for a list of ``(setting, rows)`` (rows None = every row)."""
    by_hook: dict[str, list[_Plan]] = {}
    for setting, rows in settings:
        for h, plan in _resolve(setting, model, rows).items():
            by_hook.setdefault(h, []).append(plan)
    return [(h, _hook_fn(plans)) for h, plans in by_hook.items()]


@contextlib.contextmanager
def apply(vector: SteeringVector, model: Any, strength: float = 1.0, **kw: Any) -> Iterator[Any]:
    """Steer every forward call of ``model`` inside the ``with`` block (hooks removed after).

    Keyword arguments are the fields of :class:`Steering` (schedule, branch, operator, units, hooks,
    weights, heads). Everything is checked before anything is attached.
    """
    hooks = steering_hooks(model, [(Steering(vector, strength, **kw), None)])
    with model.hooks(hooks):
        yield model


class Steerer:
    """A knob for interactive use: ``set(...)`` a setting, ``generate`` with it, ``reset()``.

    Nothing stays attached between calls: each ``generate`` attaches the current settings for that
    call only.

    >>> knob = Steerer(model)
    >>> knob = knob.set(jazz, strength=1.5, schedule=(2, None))
    >>> out = knob.generate(["rock"], duration=6, seed=0)
    >>> knob.reset().settings
    []
    """

    def __init__(self, model: Any):
        self.model = model
        self.settings: list[Steering] = []

    def set(self, vector: SteeringVector, strength: float = 1.0, **kw: Any) -> "Steerer":
        """Replace the current settings with one (checked now, so a slider gets errors at once)."""
        setting = Steering(vector, strength, **kw)
        _resolve(setting, self.model, None)
        self.settings = [setting]
        return self

    def add(self, vector: SteeringVector, strength: float = 1.0, **kw: Any) -> "Steerer":
        """Stack one more setting (e.g. several vectors at once)."""
        setting = Steering(vector, strength, **kw)
        _resolve(setting, self.model, None)
        self.settings.append(setting)
        return self

    def reset(self) -> "Steerer":
        self.settings = []
        return self

    def hooks(self) -> list:
        return steering_hooks(self.model, [(s, None) for s in self.settings])

    def generate(self, prompts: Sequence[str | None] | str, duration: float, **kw: Any) -> Any:
        check_reaches(self.settings, self.model, duration)
        extra = list(kw.pop("fwd_hooks", []))
        return self.model.generate(prompts, duration, fwd_hooks=self.hooks() + extra, **kw)

    def __repr__(self) -> str:
        return f"Steerer({[s.describe() for s in self.settings]})"


@dataclasses.dataclass
class SweepOutput:
    """A batched sweep: the generation and one row of settings per generated clip."""

    output: Any
    rows: pd.DataFrame  # clip, prompt, setting index, noise id and the setting's fields

#: One sweep setting: a Steering, several Steerings applied together, or None (unsteered).
Setting = Steering | Sequence[Steering] | None


def as_steerings(setting: Setting) -> list[Steering]:
    """The steerings of a setting as a list (None: none; one ``Steering``: a list of one)."""
    if setting is None:
        return []
    if isinstance(setting, Steering):
        return [setting]
    out = list(setting)
    bad = [type(s).__name__ for s in out if not isinstance(s, Steering)]
    if bad:
        raise TypeError(f"a sweep setting is a Steering, a list of Steerings or None; got {bad}")
    return out


def describe(setting: Setting) -> dict[str, Any]:
    """A flat row describing a setting (several Steerings: their fields joined with ``" & "``)."""
    parts = [s.describe() for s in as_steerings(setting)]
    if not parts:
        return dict(source="none", strength=0.0)
    if len(parts) == 1:
        return parts[0]
    keys = list(dict.fromkeys(k for p in parts for k in p))
    return {k: " & ".join(str(p.get(k)) for p in parts) if k != "strength"
            else float(sum(p["strength"] for p in parts)) for k in keys}


def sweep(model: Any, prompts: Sequence[str | None], settings: Sequence[Setting],
          duration: float, *, paired: bool = True, audio_prompt: torch.Tensor | None = None,
          **generate_kw: Any) -> SweepOutput:
    """Generate every prompt under every setting in **one** batched generate.

    Clip ``i * len(prompts) + j`` is prompt ``j`` under setting ``i`` (None = unsteered; a list of
    Steerings = applied together, each with its own hooks, schedule and branch). With ``paired``
    (default), clip ``j`` of every setting draws the same random numbers (paired sampling, noise id
    ``j``; see :mod:`mstools.model.sampling`): a difference between settings is due to the settings,
    not to sampling luck, and each clip equals what a separate call with the same seed would give.

    Args:
        audio_prompt: ``[len(prompts), C, N]`` waveforms to continue (repeated for every setting).
        **generate_kw: passed to ``model.generate`` (``seed``, ``decode``, ``cfg_coef`` ...).

    >>> out = sweep(model, ["rock", None], [None, Steering(jazz, 0.5)], duration=4, seed=0)
    >>> out.rows[["clip", "prompt", "setting"]].values.tolist()
    [[0, 'rock', 0], [1, None, 0], [2, 'rock', 1], [3, None, 1]]
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt (None for an unconditional clip)")
    if not settings:
        raise ValueError("give at least one setting (None for the unsteered generation)")
    batch_prompts, pairs, table, ids = [], [], [], []
    for i, setting in enumerate(settings):
        rows = list(range(i * len(prompts), (i + 1) * len(prompts)))
        batch_prompts += prompts
        ids += list(range(len(prompts)))
        for s in as_steerings(setting):
            pairs.append((s, rows))
        desc = describe(setting)
        for j, p in enumerate(prompts):
            table.append(dict(clip=rows[j], prompt=p, setting=i, noise_id=j, **desc))
    check_reaches([s for s, _ in pairs], model, duration)
    hooks = steering_hooks(model, pairs)
    extra = list(generate_kw.pop("fwd_hooks", []))
    if audio_prompt is not None:
        if audio_prompt.shape[0] != len(prompts):
            raise ValueError(f"audio_prompt has {audio_prompt.shape[0]} clips for {len(prompts)} prompts")
        generate_kw["audio_prompt"] = audio_prompt.repeat(len(settings), *([1] * (audio_prompt.dim() - 1)))
    if paired:
        generate_kw["noise_ids"] = ids
    out = model.generate(batch_prompts, duration, fwd_hooks=hooks + extra, **generate_kw)
    rows = pd.DataFrame(table)
    rows["prompt"] = pd.Series([r["prompt"] for r in table], dtype=object)  # None: unconditional
    return SweepOutput(out, rows)
