"""Tables that show what the rest of mstools computes (for lessons and reports).

>>> delay_table(num_codebooks=3, frames=2).values.tolist()
[[-1, 0, 1, -1], [-1, -1, 0, 1], [-1, -1, -1, 0]]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mstools.core import timeline

__all__ = ["delay_table"]


def delay_table(num_codebooks: int, frames: int, codebook_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Frame held by each (codebook, LM input step) under MusicGen's delay pattern.

    Step ``s`` holds codebook ``k`` of frame ``s - 1 - k`` (:func:`mstools.core.timeline.frame_of_step`);
    entries outside ``0 .. frames - 1`` are the special token and are shown as ``-1``.

    Args:
        num_codebooks: K.
        frames: T, the number of audio frames (the table has ``T + K - 1`` steps, as
            :meth:`mstools.model.hooked.HookedMusicGen.to_sequence`).
        codebook_names: row labels (default ``"codebook 0"`` ...).

    Returns:
        DataFrame ``[K, T + K - 1]`` of ints: rows = codebooks, columns = steps.

    >>> delay_table(2, 3, ["pitch", "drums"]).loc["drums"].tolist()
    [-1, -1, 0, 1]
    """
    if num_codebooks < 1 or frames < 1:
        raise ValueError(f"need num_codebooks >= 1 and frames >= 1, got {num_codebooks}, {frames}")
    names = list(codebook_names) if codebook_names is not None else [f"codebook {k}" for k in range(num_codebooks)]
    if len(names) != num_codebooks:
        raise ValueError(f"got {len(names)} codebook names for {num_codebooks} codebooks")
    steps = timeline.num_steps(frames, num_codebooks)
    table = np.full((num_codebooks, steps), -1, dtype=np.int64)
    for k in range(num_codebooks):
        for s in range(steps):
            f = timeline.frame_of_step(s, k, num_codebooks)
            if 0 <= f < frames:
                table[k, s] = f
    return pd.DataFrame(table, index=names, columns=pd.RangeIndex(steps, name="step"))
