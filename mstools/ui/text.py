"""Sentences built from result tables, so notebook prose states numbers it computed.

>>> pct(0.625), span(0.41, 0.8)
('62%', '41-80%')
>>> row = {"trial": "to jazz", "success": 0.6, "success_lo": 0.4, "success_hi": 0.8, "base_rate": 0.1,
...        "moved": 0.5, "moved_lo": 0.3, "moved_hi": 0.7, "random_mean": 0.1, "random_min": 0.0,
...        "random_max": 0.2, "random_draws": 8, "beats_random": True, "ll_drop": 0.3, "ll_drop_random": 0.2}
>>> steering_sentence(row)[:80]
'**to jazz**: 60% of steered clips on target (95% interval 40-80%), against 10% o'
"""
from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["pct", "span", "steering_sentence", "verdict"]


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def pct(x: float, digits: int = 0) -> str:
    """A share as a percentage: ``pct(0.625) == "62%"`` (NaN: ``"n/a"``)."""
    return f"{100 * x:.{digits}f}%" if _ok(x) else "n/a"


def span(lo: float, hi: float) -> str:
    """An interval of shares: ``span(0.41, 0.8) == "41-80%"``."""
    return f"{100 * lo:.0f}-{100 * hi:.0f}%" if _ok(lo) and _ok(hi) else "n/a"


def verdict(row: Mapping[str, Any]) -> str:
    """What a steering result shows, in words, from a :func:`mstools.evaluation.summarize` row:
    ``"moved the target beyond every random draw"``, ``"moved clips, but no more than random
    directions of the same norm"`` or ``"did not move the target"`` (the paired interval of ``moved``
    includes zero or lies below it)."""
    lo = row.get("moved_lo")
    moved = _ok(lo) and lo > 0
    if not moved and _ok(row.get("moved")) and not _ok(lo):  # a single pair: no interval
        moved = row["moved"] > 0
    if moved and row.get("beats_random"):
        return "moved the target beyond every random draw"
    if moved:
        return "moved clips, but no more than random directions of the same norm"
    return "did not move the target"


def steering_sentence(row: Mapping[str, Any], name: str | None = None) -> str:
    """One Markdown sentence for one :func:`mstools.evaluation.summarize` row: success with its
    interval, base rate, moved with its paired interval, the random draws, the prompted control and
    the log-likelihood drops, and the :func:`verdict`."""
    r = row
    parts = [f"**{name or r['trial']}**: {pct(r['success'])} of steered clips on target (95% interval "
             f"{span(r.get('success_lo'), r.get('success_hi'))}), against {pct(r['base_rate'])} of their "
             f"unsteered twins"]
    if _ok(r.get("moved")):
        lo, hi = r.get("moved_lo"), r.get("moved_hi")
        iv = f" (paired interval {100 * lo:+.0f} to {100 * hi:+.0f})" if _ok(lo) and _ok(hi) else ""
        parts.append(f"moved {100 * r['moved']:+.0f} points{iv}")
    if _ok(r.get("random_mean")):
        parts.append(f"{int(r.get('random_draws', 0)) or ''} random directions of equal norm: mean "
                     f"{pct(r['random_mean'])}, highest {pct(r['random_max'])}".replace(":  ", ": "))
    if _ok(r.get("prompted")):
        parts.append(f"asking for it in the text: {pct(r['prompted'])}")
    if _ok(r.get("ll_drop")):
        q = f"log-likelihood drop per frame {r['ll_drop']:.2f}"
        if _ok(r.get("ll_drop_random")):
            q += f" (random {r['ll_drop_random']:.2f}"
            q += f", prompted {r['ll_drop_prompted']:.2f})" if _ok(r.get("ll_drop_prompted")) else ")"
        parts.append(q)
    return "; ".join(parts) + f". It {verdict(r)}."
