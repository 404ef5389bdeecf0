"""Joining the writers (ranks) of one store into its manifest, in a deterministic row order."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from mstools.core.errors import StoreError
from mstools.core.fileio import atomic_write_json
from mstools.data.store.format import (CONFIG_KEYS, FORMAT, FORMAT_VERSION, MANIFEST, check_same_config,
                                       clip_id, columns_of, num_rows, read_json, read_partials,
                                       shard_labels)

__all__ = ["merge_manifests"]


def merge_manifests(path: str | os.PathLike, order: Sequence[str | int] | None = None) -> dict:
    """Merge every rank's partial manifest into ``manifest.json`` and return the merged manifest.

    Rows are ordered by rank, then shard, then row; or, when ``order`` (a sequence of clip ids)
    is given, by each clip's position in ``order`` (rows of one clip keep their stored order).
    The order is remembered, so later merges (e.g. after a resume) use it again; clips it does
    not name come after it, by rank then shard.

    Raises:
        StoreError: ranks written with different configurations, a clip stored twice, or
            stored clips missing from ``order``.
        StoreIntegrityError: a shard listed by a partial manifest is missing or unreadable.
    """
    path = Path(path)
    try:
        root = read_json(path / MANIFEST, "the store manifest", "")
    except StoreError:
        root = None  # rebuilt from the partial manifests below
    partials = read_partials(path, root or {"shards": []})
    if root is None and not partials:
        raise StoreError(f"{path} has neither a valid {MANIFEST} nor partial manifests; "
                         f"it is not a store (create one with ActivationStore.create)")
    config = {k: (root or next(iter(partials.values()))["config"])[k] for k in CONFIG_KEYS}
    hook_shapes = dict(config["hook_shapes"])
    for rank, partial in partials.items():
        check_same_config(partial["config"], config, f"rank {rank}'s partial manifest",
                           ignore=("hook_shapes",))
        for hook, shape in partial["hook_shapes"].items():
            if shape is None:
                continue
            if hook_shapes.get(hook) not in (None, shape):
                raise StoreError(f"hook {hook!r} has row shape {shape} in rank {rank} but "
                                 f"{hook_shapes[hook]} elsewhere; the ranks ran different models")
            hook_shapes[hook] = shape
    config["hook_shapes"] = hook_shapes

    shards, rows, shard_col, row_col = [], [], [], []
    for rank in sorted(partials):
        for entry in sorted(partials[rank]["shards"], key=lambda s: s["index"]):
            labels = shard_labels(path, entry)
            n = num_rows(labels)
            shard_col += [len(shards)] * n
            row_col += list(range(n))
            rows += [dict(zip(labels, values)) for values in zip(*labels.values())]
            shards.append({**entry, "rank": rank})

    seen: dict[Any, str] = {}
    for shard in shards:
        for clip in shard["clips"]:
            if clip in seen:
                raise StoreError(f"clip {clip!r} is stored twice ({seen[clip]} and "
                                 f"{shard['file']}); give each rank distinct clips")
            seen[clip] = shard["file"]

    if order is not None:
        order = [clip_id(c) for c in order]
        given = set(order)
        missing = [c for c in seen if c not in given]
        if missing:
            raise StoreError(f"{len(missing)} stored clip(s) are not in the given order "
                             f"(e.g. {missing[:3]}); pass the full list of clip ids")
    elif root is not None and root.get("clip_order") is not None:
        # the remembered order; clips written since then follow, by rank then shard
        order = list(root["clip_order"])
        known = set(order)
        order += [c for c in seen if c not in known]
    if order is not None:
        position = {clip: i for i, clip in enumerate(order)}
        perm = sorted(range(len(rows)), key=lambda i: position[rows[i]["clip"]])
        rows = [rows[i] for i in perm]
        shard_col = [shard_col[i] for i in perm]
        row_col = [row_col[i] for i in perm]

    columns = columns_of(rows)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **config,
                "clip_order": order, "shards": shards, "labels": columns,
                "locations": {"shard": shard_col, "row": row_col}, "num_rows": len(rows)}
    atomic_write_json(path / MANIFEST, manifest)
    return manifest

