"""What the instrument measures: a :class:`Trial` (one or several steering edits and the labels they
should produce), the random control (directions of equal norm), and prompted controls.

>>> t = Trial("to loud", Steering(vector, 1.0), {"dynamics": "loud"}, prompted=swap_words({"soft": "loud"}))
>>> t.prompts_for(["soft jazz piano", None])
['loud jazz piano', 'loud']
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import torch

from mstools.steering.apply import Steering
from mstools.steering.vector import SteeringVector

__all__ = ["Trial", "swap_words", "random_like", "random_setting"]

#: A prompted control: one prompt for all, one per source prompt, or a function of the source prompt.
Prompted = str | Sequence[str | None] | Callable[[str | None], str | None] | None


@dataclasses.dataclass
class Trial:
    """One steering condition.

    Attributes:
        name: shown in tables.
        steering: one :class:`~mstools.steering.Steering`, or several applied together (each with its
            own hooks, strength, schedule and branch, e.g. two edits at once).
        target: labels steering should produce, e.g. ``{"genre": "jazz"}``; every factor not named
            here is one steering should keep (selectivity).
        segment_targets: per-segment targets overriding ``target`` (segment index -> labels), e.g.
            a crossfade from A to B.
        prompted: the prompted control (the target asked for in text instead of steering): a prompt
            for all clips, a list (one per source prompt), or a function of the source prompt (e.g.
            :func:`swap_words`). Default: the target's labels joined ("jazz").
    """

    name: str
    steering: Steering | Sequence[Steering]
    target: Mapping[str, str]
    segment_targets: Mapping[int, Mapping[str, str]] | None = None
    prompted: Prompted = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a trial needs a non-empty name, got {self.name!r}")
        if not self.steerings:
            raise ValueError(f"trial {self.name!r} has no steering")
        bad = [type(s).__name__ for s in self.steerings if not isinstance(s, Steering)]
        if bad:
            raise TypeError(f"trial {self.name!r}: steering must be Steering objects, got {bad}")
        if not self.target and not self.segment_targets:
            raise ValueError(f"trial {self.name!r} has no target (e.g. {{'genre': 'jazz'}})")

    @property
    def steerings(self) -> list[Steering]:
        """The trial's edits as a list."""
        return [self.steering] if isinstance(self.steering, Steering) else list(self.steering)

    def target_for(self, segment: int) -> dict[str, str]:
        """Labels wanted in ``segment`` (``segment_targets`` first, else ``target``)."""
        if self.segment_targets is not None and segment in self.segment_targets:
            return dict(self.segment_targets[segment])
        return dict(self.target)

    def prompts_for(self, sources: Sequence[str | None]) -> list[str | None]:
        """The prompted control's prompt for every source prompt."""
        p = self.prompted
        if p is None:
            words = " ".join(str(v) for v in (self.target or next(iter(self.segment_targets.values()))).values())
            return [words] * len(sources)
        if isinstance(p, str):
            return [p] * len(sources)
        if callable(p):
            return [p(s) for s in sources]
        out = list(p)
        if len(out) != len(sources):
            raise ValueError(f"trial {self.name!r}: prompted has {len(out)} prompts for "
                             f"{len(sources)} source prompts; give one per source prompt")
        return out


def swap_words(mapping: Mapping[str, str], otherwise: str | None = None) -> Callable[[str | None], str | None]:
    """A prompted control that replaces words: ``swap_words({"soft": "loud"})("soft jazz") == "loud jazz"``.

    Args:
        mapping: word -> replacement (whole words, case-insensitive).
        otherwise: the prompt used when no word matches (None prompt included); default: the
            replacements joined.

    >>> swap_words({"rock": "jazz"})("fast rock with piano"), swap_words({"rock": "jazz"})(None)
    ('fast jazz with piano', 'jazz')
    """
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in mapping) + r")\b", re.IGNORECASE)
    lower = {k.lower(): v for k, v in mapping.items()}
    fallback = otherwise if otherwise is not None else " ".join(dict.fromkeys(mapping.values()))

    def prompted(prompt: str | None) -> str | None:
        if prompt is None or not pattern.search(prompt):
            return fallback
        return pattern.sub(lambda m: lower[m.group(0).lower()], prompt)

    return prompted


def random_like(vector: SteeringVector, seed: int) -> SteeringVector:
    """A random direction per hook with the same norm as ``vector``'s (the equal-norm control).

    >>> v = SteeringVector({"blocks.0.hook_resid_post": torch.tensor([3.0, 4.0])}, "m")
    >>> round(random_like(v, 0).norms()["blocks.0.hook_resid_post"], 4)
    5.0
    """
    g = torch.Generator().manual_seed(int(seed))
    dirs = {}
    for h, v in vector.directions.items():
        r = torch.randn(v.shape, generator=g, dtype=torch.float32)
        dirs[h] = (r / r.norm() * v.float().norm()).to(v.dtype)
    return SteeringVector(dirs, vector.fingerprint, source=f"random({vector.source})",
                          units=vector.units, meta={"control": "random", "seed": int(seed)})


def random_setting(steerings: Sequence[Steering], seed: int) -> list[Steering]:
    """The same edits with every vector replaced by a random one of equal per-hook norm."""
    return [dataclasses.replace(s, vector=random_like(s.vector, seed * 101 + i))
            for i, s in enumerate(steerings)]
