"""Steering: vectors (data), operators and schedules (small callables), and attaching them.

>>> from mstools.steering import SteeringVector, apply, sweep, Steerer, schedules
>>> with apply(vector, model, strength=2.0, schedule=schedules.window(3.0, None)):
...     out = model.generate(["rock"], duration=6, seed=0)
"""
from mstools.steering import operators, schedules, seed
from mstools.steering.apply import Steerer, Steering, SweepOutput, apply, mean_norms, steering_hooks, sweep
from mstools.steering.operators import (ablate_operator, add_operator, get_operator, seed_mix_operator,
                                        set_projection_operator)
from mstools.steering.schedules import (as_schedule, constant, crossfade, decay, from_callable, hook_calls,
                                        periodic, window)
from mstools.steering.seed import seed_probe_hook, seed_steering, seed_vector
from mstools.steering.vector import SteeringVector, check_strength

__all__ = ["SteeringVector", "check_strength", "Steering", "apply", "sweep", "Steerer", "SweepOutput",
           "mean_norms", "steering_hooks", "operators", "schedules", "add_operator",
           "seed_mix_operator", "ablate_operator", "set_projection_operator", "get_operator",
           "constant", "window", "periodic", "decay", "crossfade", "from_callable", "as_schedule",
           "hook_calls", "seed", "seed_probe_hook", "seed_steering", "seed_vector"]
