"""Labelled features in memory: pooled activations of a source's clips beside their labels.

The in-memory twin of :func:`mstools.data.caching.cache_activations` (same batching, same
computation: :func:`~mstools.data.caching.plan_batches` and
:func:`~mstools.data.caching.compute_batch`), for sets small enough to hold: what probes and
directions are fitted on in notebooks and experiments. For large sets, cache to a store and read it
(``store.features(hook)``, ``store.labels``): the result has the same form.

>>> from mstools.data.sources import testbed_clips
>>> X, labels = labelled_features(model, testbed_clips(16, seconds=2.0, seed=101),
...                               ["blocks.1.hook_resid_post"])
>>> X["blocks.1.hook_resid_post"].shape == (16, model.d_model), list(labels.columns[:3])
(True, ['clip', 'prompt', 'genre'])
"""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import torch

from mstools.core.names import NamesFilter
from mstools.data.caching import compute_batch, plan_batches, resolve_hooks
from mstools.data.pooling import Pooling, as_pooling
from mstools.data.sources import Item

__all__ = ["labelled_features"]


def labelled_features(model: Any, source: Iterable[Item], hooks: NamesFilter, *,
                      pooling: Pooling | str = "mean", batch_size: int = 128, seed: int = 0,
                      duration: float | None = None, branch: str = "cond",
                      progress: bool = False) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Pooled activations of every item of ``source`` and a labels table, rows aligned.

    Args:
        model: a HookedMusicGen.
        source: items (:mod:`mstools.data.sources`: ``testbed_clips``, ``prompt_set``,
            ``audio_folder`` ...).
        hooks: names or globs.
        pooling: ``"mean"``, ``"last"``, ``"window"`` / a :class:`Pooling`, or ``"frame"`` (one row
            per frame; labels get a ``frame`` column).
        batch_size, seed, duration: as for caching (generated items are sampled with the batch seed).
        branch: ``"cond"`` (the prompt) or ``"uncond"`` (the null condition CFG uses).
        progress: a progress bar over batches.

    Returns:
        ``({hook: float32 [N, ...]}, labels)``; ``labels`` has ``clip`` (the item id), ``prompt`` and
        the items' label columns.
    """
    names = resolve_hooks(model, hooks)
    pool = as_pooling(pooling)
    feats: dict[str, list[torch.Tensor]] = {h: [] for h in names}
    rows: list[dict[str, Any]] = []
    batches = plan_batches(model, source, batch_size, seed=seed, duration=duration)
    if progress:
        from tqdm.auto import tqdm  # lazy: only for the progress bar
        batches = tqdm(batches, desc="features", unit="batch")
    for batch in batches:
        acts = compute_batch(model, batch, names, pool, (branch,), duration)[branch]
        for h in names:
            x = acts[h].float().cpu()
            feats[h].append(x.flatten(0, 1) if pool.per_frame else x)
        for i, it in enumerate(batch.items):
            base = {"clip": it.clip_id, "prompt": it.prompt, **dict(it.labels)}
            if pool.per_frame:
                frames = acts[names[0]].shape[1]
                rows += [{**base, "frame": f} for f in range(frames)]
            else:
                rows.append(base)
    if not rows:
        raise ValueError("the source has no items")
    return {h: torch.cat(v) for h, v in feats.items()}, pd.DataFrame(rows)
