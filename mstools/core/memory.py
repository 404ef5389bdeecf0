"""Garbage-collection policy for long loops.

A process that imports torch, transformers and audiocraft keeps about 600,000 objects alive that the
cyclic garbage collector tracks; one full (generation 2) collection walks all of them and takes
about 0.4 s on one CPU core. A loop that allocates many small objects (caching, one batch after
another) triggers such collections every few seconds, which costs more than the work itself on a
small model. Inside :func:`young_collections_only` the collector still runs on its young
generations (where a loop's short-lived garbage lives) but skips full collections; the previous
thresholds are restored on exit, also after an exception.

Example:
    >>> import gc
    >>> before = gc.get_threshold()
    >>> with young_collections_only():
    ...     gc.get_threshold()[2] > 10**6
    True
    >>> gc.get_threshold() == before
    True
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["young_collections_only"]

_NEVER = 2**30


@contextlib.contextmanager
def young_collections_only() -> Iterator[None]:
    """Skip full (generation 2) garbage collections inside the block; young ones still run."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*before)
