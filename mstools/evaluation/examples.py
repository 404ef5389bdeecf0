"""Worked examples from the instrument's table: the clip that shows what a trial did, and the pair
(unsteered twin, steered clip) generated again to listen to.

An example is chosen, never hand-picked: :func:`pick_example` prefers a steered clip that is on
target while its paired unsteered twin is not (steering moved it), then one already on target
without steering, then one that missed (the lesson is then that steering failed, and ``kind`` says
so). :func:`replay` regenerates that pair with the same seed and noise id, so the codes are the ones
the table scored (paired sampling, :mod:`mstools.model.sampling`).

>>> row = pick_example(table, "to jazz")                    # doctest: +SKIP
>>> out = replay(model, trial, row, duration=6.0)           # doctest: +SKIP
>>> out.codes.shape[0]                                      # row 0 unsteered, row 1 steered  # doctest: +SKIP
2
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mstools.evaluation.trials import Trial
from mstools.steering.apply import steering_hooks

__all__ = ["pick_example", "replay", "KINDS"]

#: Example kinds, best first: moved onto the target by steering; on target already without it;
#: missed the target.
KINDS = ("moved", "already", "missed")


def pick_example(table: pd.DataFrame, trial: str, *, segment: int | None = None) -> pd.Series:
    """The clip of ``trial`` that best shows an effect, with its unsteered twin's labels.

    Args:
        table: the table of :func:`mstools.evaluation.steering`.
        trial: a trial name in it.
        segment: the time segment judged (default: the last one, where a window's effect shows).

    Returns:
        A Series: ``seed``, ``clip`` (the noise id), ``source_prompt``, ``kind`` (one of
        :data:`KINDS`), ``segment``, the steered clip's factor labels and ``loglik``, and the twin's as
        ``twin_<factor>`` / ``twin_loglik``. Within a kind, the clip with the highest grammar
        log-likelihood wins (an intact clip), then the lowest seed and clip.

    Raises:
        KeyError: no steered clip of that trial in the table.
    """
    factors = list(table.attrs.get("factors") or [c[len("target_"):] for c in table.columns
                                                   if c.startswith("target_")])
    steered = table[(table["trial"] == trial) & (table["control"] == "none")]
    if steered.empty:
        names = sorted(set(table.loc[table["control"] == "none", "trial"]))
        raise KeyError(f"no steered clips of trial {trial!r}; trials: {names}")
    seg = int(steered["segment"].max()) if segment is None else int(segment)
    steered = steered[steered["segment"] == seg]
    twins = table[(table["control"] == "unsteered") & (table["segment"] == seg)]
    keep = ["seed", "clip"] + factors + ["loglik"]
    pairs = steered.merge(twins[keep].rename(columns={c: f"twin_{c}" for c in factors + ["loglik"]}),
                          on=["seed", "clip"], how="left")
    want = {f: pairs[f"target_{f}"] for f in factors if pairs[f"target_{f}"].notna().any()}

    def on(prefix: str) -> np.ndarray:
        hit = np.ones(len(pairs), dtype=bool)
        for f, v in want.items():
            hit &= (pairs[f"{prefix}{f}"] == v).to_numpy()
        return hit

    now, before = on(""), on("twin_")
    pairs["kind"] = np.where(now & ~before, "moved", np.where(now, "already", "missed"))
    pairs["_rank"] = pairs["kind"].map({k: i for i, k in enumerate(KINDS)})
    best = pairs.sort_values(["_rank", "loglik", "seed", "clip"], ascending=[True, False, True, True]).iloc[0]
    cols = (["seed", "clip", "source_prompt", "kind", "segment"] + factors + ["loglik"]
            + [f"twin_{f}" for f in factors] + ["twin_loglik"])
    return best[cols]


def replay(model: Any, trial: Trial, example: pd.Series | dict, duration: float, **generate_kw: Any) -> Any:
    """Generate an example again: row 0 the unsteered twin, row 1 the steered clip (same prompt,
    seed and noise id as in the instrument's table, so the same codes), decoded to audio.

    Args:
        model: the model the table was made with.
        trial: the :class:`Trial` (its steerings are applied to row 1 only).
        example: a row with ``seed``, ``clip`` and ``source_prompt`` (e.g. :func:`pick_example`).
        duration: the clip length the table used.
        **generate_kw: what the table was generated with besides (``audio_prompt`` for one clip
            ``[1, C, N]``, ``cfg_coef`` ...).
    """
    prompt = example["source_prompt"]
    prompt = None if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)) else prompt
    clip, seed = int(example["clip"]), int(example["seed"])
    hooks = steering_hooks(model, [(s, [1]) for s in trial.steerings])
    audio = generate_kw.pop("audio_prompt", None)
    if audio is not None:
        generate_kw["audio_prompt"] = audio.repeat(2, *([1] * (audio.dim() - 1)))
    extra = list(generate_kw.pop("fwd_hooks", []))
    return model.generate([prompt, prompt], duration, seed=seed, noise_ids=[clip, clip],
                          fwd_hooks=hooks + extra, **generate_kw)
