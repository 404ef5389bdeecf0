"""One row per steering trial (and segment) from the instrument's clip table.

Columns of :func:`summarize`:

- ``n``, ``success`` (share of steered clips on target) with a 95 % Wilson interval;
- ``base_rate``: the share of the paired **unsteered** clips already on the trial's target;
  ``moved = success - base_rate`` with a paired 95 % interval (``moved_lo``, ``moved_hi``);
- ``random_mean``, ``random_sd``, ``random_min``, ``random_max`` over the random draws (success
  rate of each draw of random directions of equal norm), ``random_draws``, and ``beats_random``:
  the trial's success is above every draw's;
- ``prompted``: success of the prompted control (the target asked for in text);
- ``loglik`` of the steered clips and the drops from their paired unsteered clips: ``ll_drop``
  (steered), ``ll_drop_random``, ``ll_drop_prompted`` (higher = more damage);
- selectivity, for every factor the trial does not target: ``kept_<f>`` = share of steered clips
  whose label equals their paired unsteered clip's, beside ``random_kept_<f>``;
- ``identical``: share of steered clips whose codes in this segment equal their unsteered twin's
  (1.0 before a steering window);
- the setting (``source, strength, schedule, branch, hooks, ...``).

>>> from mstools.evaluation import Trial, steering
>>> from mstools.steering import Steering
>>> table = steering(model, [Trial("jazz", Steering(jazz, 0.5, branch="both"), {"genre": "jazz"})],
...                  [None] * 4, seeds=[0], duration=3.0)
>>> row = summarize(table).iloc[0]
>>> bool(row["moved"] == row["success"] - row["base_rate"]), "kept_tempo" in row
(True, True)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from mstools.evaluation.stats import paired_difference, wilson

__all__ = ["summarize", "label_shares", "best_trial", "SETTING_COLUMNS"]

SETTING_COLUMNS = ("source", "strength", "schedule", "branch", "operator", "units", "hooks", "heads")
_PAIR = ["seed", "clip", "segment"]


def _factors(table: pd.DataFrame) -> list[str]:
    f = table.attrs.get("factors")
    return list(f) if f else [c[len("target_"):] for c in table.columns if c.startswith("target_")]


def _on_target(df: pd.DataFrame, want: dict[str, str]) -> np.ndarray:
    hit = np.ones(len(df), dtype=bool)
    for f, v in want.items():
        hit &= (df[f] == v).to_numpy()
    return hit


def summarize(table: pd.DataFrame, by: Sequence[str] = ("segment",)) -> pd.DataFrame:
    """Summarise the table of :func:`mstools.evaluation.steering` (see the module docstring).

    Args:
        table: the instrument's clip table.
        by: extra grouping beside the trial (default: the time segment).

    Returns:
        DataFrame, one row per trial and group, trials in order of appearance.
    """
    factors = _factors(table)
    by = [b for b in by if b in table.columns]
    if "control" not in table.columns or not (table["control"] == "unsteered").any():
        raise ValueError("the table has no unsteered clips: pass the table of mstools.evaluation.steering")
    plain = table[table["control"] == "unsteered"].set_index(_PAIR)
    rows = []
    steered_all = table[table["control"] == "none"]
    for key, g in steered_all.groupby(["trial"] + by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict = dict(zip(["trial"] + by, key))
        want = {f: g[f"target_{f}"].iloc[0] for f in factors if pd.notna(g[f"target_{f}"].iloc[0])}
        mine = table[table["trial"] == key[0]]
        for col, value in zip(by, key[1:]):
            mine = mine[mine[col] == value]
        twin = plain.reindex(pd.MultiIndex.from_frame(g[_PAIR]))
        s = g["success"].astype(bool).to_numpy()
        u = _on_target(twin.reset_index(), want)
        row["n"] = len(g)
        row["success"] = float(s.mean())
        row["success_lo"], row["success_hi"] = wilson(int(s.sum()), len(s))
        row["base_rate"] = float(u.mean())
        row["moved"], row["moved_lo"], row["moved_hi"] = paired_difference(s, u)
        rnd = mine[mine["control"] == "random"]
        per_draw = rnd.groupby("draw")["success"].apply(lambda x: float(x.astype(bool).mean()))
        row["random_draws"] = int(len(per_draw))
        row["random_mean"] = float(per_draw.mean()) if len(per_draw) else math.nan
        row["random_sd"] = float(per_draw.std(ddof=1)) if len(per_draw) > 1 else math.nan
        row["random_min"] = float(per_draw.min()) if len(per_draw) else math.nan
        row["random_max"] = float(per_draw.max()) if len(per_draw) else math.nan
        row["beats_random"] = bool(row["success"] > row["random_max"]) if len(per_draw) else None
        pr = mine[mine["control"] == "prompted"]
        row["prompted"] = float(pr["success"].astype(bool).mean()) if len(pr) else math.nan
        row["loglik"] = float(g["loglik"].mean())
        row["ll_drop"] = float((twin["loglik"].to_numpy() - g["loglik"].to_numpy()).mean())
        for name, part in (("random", rnd), ("prompted", pr)):
            if len(part):
                t2 = plain.reindex(pd.MultiIndex.from_frame(part[_PAIR]))
                row[f"ll_drop_{name}"] = float((t2["loglik"].to_numpy() - part["loglik"].to_numpy()).mean())
            else:
                row[f"ll_drop_{name}"] = math.nan
        for f in factors:
            if f in want:
                continue
            row[f"kept_{f}"] = float((g[f].to_numpy() == twin[f].to_numpy()).mean())
            if len(rnd):
                t2 = plain.reindex(pd.MultiIndex.from_frame(rnd[_PAIR]))
                row[f"random_kept_{f}"] = float((rnd[f].to_numpy() == t2[f].to_numpy()).mean())
            else:
                row[f"random_kept_{f}"] = math.nan
        if "first_diff_s" in g and "end_s" in g:
            row["identical"] = float((g["first_diff_s"].to_numpy() >= g["end_s"].to_numpy() - 1e-9).mean())
        for c in SETTING_COLUMNS:
            if c in g:
                row[c] = g[c].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(summary: pd.DataFrame, metric: str = "moved", *, tol: float = 1e-9) -> pd.Series:
    """The one rule for "the best setting" of a summary: the row with the largest ``metric`` (default
    ``moved``: success minus the paired base rate) among rows that beat every random draw; when no
    row does, among all rows. Rows within ``tol`` tie and the earlier row (the order the trials were
    given in) wins. The returned row has ``rule``: which of the two cases applied.

    >>> s = pd.DataFrame({"trial": ["a", "b", "c"], "moved": [0.5, 0.5, 0.9], "beats_random": [True, True, False]})
    >>> r = best_trial(s); r["trial"], r["rule"]
    ('a', 'largest moved among settings that beat every random draw')
    """
    if summary.empty:
        raise ValueError("best_trial: the summary is empty")
    beats = summary["beats_random"].fillna(False).astype(bool) if "beats_random" in summary else None
    pool = summary[beats] if beats is not None and beats.any() else summary
    rule = (f"largest {metric} among settings that beat every random draw" if pool is not summary or
            (beats is not None and beats.all()) else f"largest {metric} (no setting beat every random draw)")
    vals = pool[metric].astype(float)
    row = pool[vals >= vals.max() - tol].iloc[0].copy()
    row["rule"] = rule
    return row


def label_shares(table: pd.DataFrame, factor: str, by: Sequence[str] = ("trial", "control")) -> pd.DataFrame:
    """Share of clips whose ``factor`` was read as each label, per group (rows sum to 1).

    Where :func:`summarize` says how often steering hit its target, this says where the other clips
    went (e.g. to the target genre's partner, or to ``"none"``: grammar broken), and gives the
    unsteered base rate of every label.

    >>> t = pd.DataFrame({"trial": ["a", "a", "a", "b"], "genre": ["jazz", "jazz", "rock", "none"]})
    >>> label_shares(t, "genre", by=["trial"]).round(2).values.tolist()
    [[0.67, 0.0, 0.33], [0.0, 1.0, 0.0]]
    """
    by = list(by)
    missing = [c for c in by + [factor] if c not in table.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    counts = table.groupby(by + [factor], sort=False, dropna=False).size().unstack(factor, fill_value=0)
    counts = counts[sorted(counts.columns, key=str)]
    return counts.div(counts.sum(axis=1), axis=0)
