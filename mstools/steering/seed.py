"""The seed paper's steering mode, as its released code runs it.

What the released code (Hugging Face transformers, ``facebook/musicgen-small``) does, and how mstools
says the same thing:

==========================================  ========================================================
released code                               mstools
==========================================  ========================================================
forward hook on                             ``blocks.{i}.hook_resid_post`` (same module output)
``model.decoder.model.decoder.layers[i]``
conditional half of the CFG batch only      ``branch="cond"``
``h <- (h + a * ||h|| * v) / (1 + a)``      ``operator="seed_mix"`` (``v`` unit norm, per token)
per token, ``v`` the probe row, unit norm
``self.count += 1``; steer when             :func:`~mstools.steering.schedules.hook_calls`
``self.count % 25 == 0``; ``count`` starts  ``(every=25, offset)``: one counter per schedule object,
at ``offset``, one counter for all layers   shared by every steered layer
vector for layer ``i`` is the probe row     ``seed_layer_shift=2``: the direction for
trained on ``hidden_states[i - 1]``         ``blocks.{i}`` comes from the probe of
                                            ``blocks.{i-2}.hook_resid_post``
==========================================  ========================================================

``hidden_states[j]`` of transformers' MusicGen is the input of layer ``j`` (``j = 0``: the
embeddings), i.e. the output of layer ``j - 1``, except the last one, which is taken after the final
layer norm. The released probes are indexed so that probe ``k`` was fit on ``hidden_states[k + 1]``
(output of layer ``k``; for the last ``k``, after the final norm) and layer ``i`` is steered with
probe ``i - 2``: the injection sits two layers after the activations its probe read.
:func:`seed_probe_hook` names probe ``k``'s activation in mstools; :func:`seed_vector` builds the
vector with that shift (or none: ``seed_layer_shift=0``).

Their schedule is a count of hook calls, not a function of the step: for one steered layer and
``offset=0`` it steers steps 24, 49, ... of a decoder-only generate (``periodic(25, phase=24)``) and
steps 23, 48, ... under ``MusicgenForConditionalGeneration.generate`` (whose first decoder call comes
before step 0); with several layers the shared counter gives each layer its own phase.

>>> steering = seed_steering(vector, strength=0.5, every=25, offset=0)
>>> with apply_setting(model, steering):
...     out = model.generate(["jazz"], duration=3)
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch

from mstools.steering.apply import Steering, steering_hooks
from mstools.steering.schedules import hook_calls
from mstools.steering.vector import SteeringVector

__all__ = ["SEED_LAYER_SHIFT", "SEED_PERIOD", "seed_probe_hook", "seed_vector", "seed_steering",
           "apply_setting"]

#: The released code steers layer ``i`` with the probe of ``hidden_states[i - 1]`` (output of layer i-2).
SEED_LAYER_SHIFT = 2
#: The released code steers every 25th hook call.
SEED_PERIOD = 25


def seed_probe_hook(index: int, num_layers: int) -> str:
    """mstools' name of the activation the released code's probe ``index`` was fit on
    (``hidden_states[index + 1]``): ``blocks.{index}.hook_resid_post``, or
    ``ln_final.hook_normalized`` for the last index (``num_layers - 1``).

    >>> seed_probe_hook(3, 24), seed_probe_hook(23, 24)
    ('blocks.3.hook_resid_post', 'ln_final.hook_normalized')
    """
    if not 0 <= index < num_layers:
        raise ValueError(f"probe index {index} is out of range for {num_layers} layers")
    return "ln_final.hook_normalized" if index == num_layers - 1 else f"blocks.{index}.hook_resid_post"


def seed_vector(directions: Mapping[str, torch.Tensor] | SteeringVector, layers: Sequence[int], *,
                num_layers: int, fingerprint: str | None = None, seed_layer_shift: int = SEED_LAYER_SHIFT,
                source: str = "seed") -> SteeringVector:
    """A vector on ``blocks.{i}.hook_resid_post`` for each ``i`` in ``layers``, whose direction is
    the one fit on the activation of probe ``i - seed_layer_shift`` (:func:`seed_probe_hook`).

    Args:
        directions: hook name -> direction (e.g. probe rows for the target class), keyed by the hook
            the probe read; a :class:`SteeringVector` gives its fingerprint too.
        layers: layers to steer (``i - seed_layer_shift`` must be a valid probe index).
        num_layers: the model's number of layers.
        seed_layer_shift: 2 as released; 0 steers with the probe of the same layer's output.
    """
    if isinstance(directions, SteeringVector):
        fingerprint = fingerprint or directions.fingerprint
        directions = {h: directions[h] for h in directions.hooks}
    if fingerprint is None:
        raise ValueError("give the model fingerprint (or a SteeringVector)")
    out = {}
    for i in layers:
        k = int(i) - int(seed_layer_shift)
        if not 0 <= int(i) < num_layers or not 0 <= k < num_layers:
            raise ValueError(f"layer {i} with seed_layer_shift={seed_layer_shift} reads probe {k}: "
                             f"out of range for {num_layers} layers (the released code has no probe "
                             "there either)")
        probe = seed_probe_hook(k, num_layers)
        if probe not in directions:
            raise KeyError(f"layer {i} needs the direction fit on {probe!r} (seed_layer_shift="
                           f"{seed_layer_shift}); given: {sorted(directions)}")
        out[f"blocks.{int(i)}.hook_resid_post"] = torch.as_tensor(directions[probe]).float()
    return SteeringVector(out, fingerprint, source=f"{source}:shift={seed_layer_shift}", units="raw")


def seed_steering(vector: SteeringVector, strength: float = 0.5, *, every: int = SEED_PERIOD,
                  offset: int = 0, weights: Mapping[str, float] | None = None,
                  as_composite_generate: bool = False) -> Steering:
    """The released code's setting: ``seed_mix`` on the conditional rows, every ``every``-th hook
    call counted from ``offset`` with one counter for all of the vector's layers.

    ``as_composite_generate``: the released code ran under ``MusicgenForConditionalGeneration.generate``,
    which calls the decoder on step 0 twice (transformers 5.23: a prefill call, then step 0 again);
    mstools' ``generate`` (and a decoder-only ``generate``) calls it once per step. Set this when
    running mstools' ``generate`` to steer the steps the released code steers: the counter starts one
    call per steered layer further on. Leave it off when the hooks run under the composite's own
    ``generate`` (wrap it in ``model.cfg_layout(batch)`` so ``"cond"`` means the first half).

    The schedule is stateful: build a new setting (or ``setting.schedule.reset()``) per generation.
    """
    start = int(offset) + (len(vector.hooks) if as_composite_generate else 0)
    return Steering(vector, strength, schedule=hook_calls(every, start), branch="cond",
                    operator="seed_mix", units="raw", weights=weights)


@contextlib.contextmanager
def apply_setting(model: Any, setting: Steering) -> Iterator[Any]:
    """Attach one :class:`Steering` to ``model`` inside the ``with`` block (its counter is reset)."""
    reset = getattr(setting.schedule, "reset", None)
    if callable(reset):
        reset()
    with model.hooks(steering_hooks(model, [(setting, None)])):
        yield model
