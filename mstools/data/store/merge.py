"""Joining the writers (ranks) of one store into its manifest, in a deterministic row order.

A merge writes three files, each atomically, the manifest last: ``labels.json`` (the labels table,
columnar), ``index.safetensors`` (shard and row of every stored row, int32) and ``manifest.json``
(configuration, shard entries, and the checksums of the other two, so a merge interrupted between
them is noticed and redone). Shards and partial manifests of format version 1 are read too: their
entries gain checksums computed from the files (a merge upgrades a version-1 store).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from mstools.core.errors import StoreError
from mstools.core.fileio import atomic_write_bytes, atomic_write_json, header
from mstools.data.store.format import (CONFIG_KEYS, FORMAT_VERSION, INDEX, KIND, LABELS, MANIFEST,
                                       READABLE_VERSIONS, check_same_config, checksum, clip_id,
                                       file_checksum, read_json, read_partials, shard_labels,
                                       shard_tensors, tensor_checksum)

__all__ = ["merge_manifests"]


def _upgrade(path: Path, entry: dict, hooks: Sequence[str]) -> dict:
    """A version-1 shard entry with the checksums version 2 records (computed from the file)."""
    if "checksums" in entry and "xxh3" in entry:
        return entry
    tensors = shard_tensors(path, {"file": entry["file"]}, hooks)
    return {**{k: v for k, v in entry.items() if k != "sha256"},
            "xxh3": file_checksum(path / entry["file"]),
            "checksums": {h: tensor_checksum(x) for h, x in tensors.items()}}


def merge_manifests(path: str | os.PathLike, order: Sequence[str | int] | None = None) -> dict:
    """Merge every rank's partial manifest into the store's manifest and return it.

    Rows are ordered by rank, then shard, then row; or, when ``order`` (a sequence of clip ids)
    is given, by each clip's position in ``order`` (rows of one clip keep their stored order).
    The order is remembered, so later merges (e.g. after a resume) use it again; clips it does
    not name come after it, by rank then shard. Memory: the labels table and two int32 columns.

    Raises:
        StoreError: ranks written with different configurations, a clip stored twice, or
            stored clips missing from ``order``.
        StoreIntegrityError: a shard listed by a partial manifest is missing or unreadable.
    """
    path = Path(path)
    try:
        root = read_json(path / MANIFEST, "the store manifest", "", versions=READABLE_VERSIONS)
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

    shards, frames, shard_col, row_col = [], [], [], []
    for rank in sorted(partials):
        for entry in sorted(partials[rank]["shards"], key=lambda s: s["index"]):
            entry = _upgrade(path, entry, config["hooks"])
            labels = shard_labels(path, entry)
            n = entry["rows"]
            shard_col.append(np.full(n, len(shards), dtype=np.int32))
            row_col.append(np.arange(n, dtype=np.int32))
            frames.append((labels, n))
            shards.append({**entry, "rank": rank})

    seen: dict[Any, str] = {}
    for shard in shards:
        for clip in shard["clips"]:
            if clip in seen:
                raise StoreError(f"clip {clip!r} is stored twice ({seen[clip]} and "
                                 f"{shard['file']}); give each rank distinct clips")
            seen[clip] = shard["file"]

    names: dict[str, None] = {}
    for labels, _ in frames:
        names.update(dict.fromkeys(labels))
    columns: dict[str, list] = {name: [] for name in names}
    for labels, n in frames:
        for name in names:
            columns[name].extend(labels.get(name, [None] * n))
    n_rows = len(next(iter(columns.values()))) if columns else 0
    shard_of = np.concatenate(shard_col) if shard_col else np.zeros(0, dtype=np.int32)
    row_of = np.concatenate(row_col) if row_col else np.zeros(0, dtype=np.int32)
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
    if order is not None and n_rows:
        position = {clip: i for i, clip in enumerate(order)}
        perm = np.argsort(np.fromiter((position[c] for c in columns["clip"]), dtype=np.int64,
                                      count=n_rows), kind="stable")
        columns = {name: [col[i] for i in perm] for name, col in columns.items()}
        shard_of, row_of = shard_of[perm], row_of[perm]

    labels_bytes = (json.dumps(columns) + "\n").encode()
    index_bytes = safetensors_bytes({"shard": torch.from_numpy(np.ascontiguousarray(shard_of)),
                                     "row": torch.from_numpy(np.ascontiguousarray(row_of))},
                                    metadata={"mstools": json.dumps(header(KIND, FORMAT_VERSION))})
    files = {}
    for key, name, data in (("labels_file", LABELS, labels_bytes), ("index_file", INDEX, index_bytes)):
        digest = checksum(data)
        files[key] = {"file": name.format(digest), "xxh3": digest}
        atomic_write_bytes(path / files[key]["file"], data)
    manifest = {**header(KIND, FORMAT_VERSION), **config, "clip_order": order, "shards": shards,
                **files, "num_rows": int(n_rows)}
    atomic_write_json(path / MANIFEST, manifest)
    # keep the side files of this merge and of the one before (a store object opened in between
    # still reads its own); older ones go
    keep = {f["file"] for m in (manifest, root or {}) for f in (m.get("labels_file"), m.get("index_file")) if f}
    for pattern in ("labels-*.json", "index-*.safetensors"):
        for old in path.glob(pattern):
            if old.name not in keep:
                old.unlink(missing_ok=True)
    return manifest
