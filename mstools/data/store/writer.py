"""Writing one rank of an activation store: clips buffered into shards, each shard and then the
rank's partial manifest replaced atomically, so an interrupted run resumes where it stopped."""
from __future__ import annotations

import contextlib
import json
import warnings
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save as safetensors_bytes

from mstools.core.errors import StoreError
from mstools.core.fileio import META_KEY, atomic_write_bytes, atomic_write_json, header
from mstools.data.store.format import (FORMAT_VERSION, KIND, RESERVED_COLUMNS, check_same_config,
                                       checksum, clip_id, columns_of, file_checksum, is_sequence,
                                       label_value, new_partial, partial_name, rank_lock, shard_name,
                                       tensor_checksum)
from mstools.data.store.merge import merge_manifests

__all__ = ["StoreWriter"]


class _Clip:
    """Rows of one clip waiting in the writer's buffer."""

    __slots__ = ("clip", "acts", "labels", "branches")

    def __init__(self, clip: str | int):
        self.clip = clip
        self.acts: dict[str, list[torch.Tensor]] = {}
        self.labels: list[dict[str, Any]] = []
        self.branches: set[str] = set()


class StoreWriter:
    """Writes rows of one rank into shards; make it with :meth:`ActivationStore.writer`.

    Add whole clips (all branches of a clip in consecutive calls); on a clean ``close()`` the buffer
    is written as a last shard. On an exception inside ``with``, the buffered rows are dropped
    (they are not done: :meth:`ActivationStore.done_clips` leaves them out, so a resume redoes them).
    """

    def __init__(self, store: Any, shard_rows: int, rank: int, world_size: int, merge: bool = True):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        if not 0 <= rank < max(world_size, 1) or rank > 999:
            raise ValueError(f"rank must be in [0, world_size={world_size}) and < 1000, got {rank}")
        self.store, self.shard_rows, self.rank, self.world_size = store, shard_rows, rank, world_size
        self.merge = merge
        self._lock = rank_lock(store.path, rank)
        self._lock.__enter__()
        self._closed = False
        try:
            self._partial = self._load_partial()
        except BaseException:
            self._release()
            raise
        self._done: set[str | int] = {c for s in self._partial["shards"] for c in s["clips"]}
        self._next_index = max((s["index"] for s in self._partial["shards"]), default=-1) + 1
        self._buffer: list[_Clip] = []
        self._buffered: set[str | int] = set()  # clip ids in the buffer
        self._buffered_rows = 0

    # ------------------------------------------------------------------ set-up
    def _load_partial(self) -> dict:
        """Read this rank's partial manifest (or start one), dropping shards that did not survive."""
        path = self.store.path
        for pattern in (f".rank{self.rank:03d}-*.tmp", f".{partial_name(self.rank)}.*.tmp"):
            for stale in path.glob(pattern):  # half-written files of an interrupted run
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        manifest = self.store._manifest
        partial_path = path / partial_name(self.rank)
        partial = self.store._partials().get(self.rank) or new_partial(manifest, self.rank)
        check_same_config(partial["config"], manifest, f"rank {self.rank}'s partial manifest",
                           ignore=("hook_shapes",))
        kept, lost = [], []
        for entry in partial["shards"]:
            f = path / entry["file"]
            if f.is_file() and f.stat().st_size == entry["bytes"] and (
                    "xxh3" not in entry or file_checksum(f) == entry["xxh3"]):
                kept.append(entry)
            else:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                lost.append(entry["file"])
        if lost:
            warnings.warn(f"shard(s) {', '.join(lost)} are missing, truncated or corrupt; their clips "
                          f"are no longer done and will be recomputed", stacklevel=3)
            partial["shards"] = kept
            atomic_write_json(partial_path, partial)
        return partial

    # ------------------------------------------------------------------ adding
    def add(self, clip_ids: Sequence[str | int], activations: Mapping[str, torch.Tensor],
            labels: Sequence[Mapping[str, Any]] | None = None, *, branch: str | None = None) -> None:
        """Add pooled activations of ``B`` clips.

        Args:
            clip_ids: ``B`` clip ids (str or int), unique in the store.
            activations: ``{hook: Tensor[B, ...]}`` for every hook of the store; with per-frame
                pooling ``Tensor[B, F, ...]`` (one row per frame, frame index ``0..F-1``).
            labels: ``B`` dicts of label columns (JSON scalars). With per-frame pooling a value may
                also be a sequence of length F (one value per frame).
            branch: CFG branch of these rows; may be omitted when the store has one branch.

        Raises:
            ValueError: wrong hooks, shapes or batch sizes, a clip id already stored, a reserved
                label name (``clip``, ``frame``, ``branch``), or an unknown branch.
        """
        if self._closed:
            raise StoreError("this writer is closed; make a new one with store.writer()")
        clips = [clip_id(c) for c in (clip_ids.tolist() if hasattr(clip_ids, "tolist") else clip_ids)]
        branch = self._branch(branch)
        hooks = self.store.hooks
        if set(activations) != set(hooks):
            missing, extra = set(hooks) - set(activations), set(activations) - set(hooks)
            raise ValueError(f"activations must have exactly the store's hooks; missing "
                             f"{sorted(missing)}, unexpected {sorted(extra)}")
        per_frame = self.store.pooling.per_frame
        batch = len(clips)
        frames = None
        for hook in hooks:
            t = activations[hook]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"activations[{hook!r}] must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() < 1 or t.shape[0] != batch:
                raise ValueError(f"activations[{hook!r}] has shape {tuple(t.shape)}; expected "
                                 f"[B={batch}, ...] (one entry per clip id)")
            if per_frame:
                if t.dim() < 2 or (frames is not None and t.shape[1] != frames):
                    raise ValueError(f"per-frame pooling: activations[{hook!r}] has shape "
                                     f"{tuple(t.shape)}; every hook must be [B, F={frames}, ...]")
                frames = t.shape[1]
            self._check_shape(hook, tuple(t.shape[2:] if per_frame else t.shape[1:]))
        if labels is None:
            labels = [{} for _ in clips]
        if len(labels) != batch:
            raise ValueError(f"got {len(labels)} label dicts for {batch} clips")
        rows_per_clip = frames if per_frame else 1
        label_rows = [self._label_rows(c, lab, branch, rows_per_clip if per_frame else None)
                      for c, lab in zip(clips, labels)]

        # one conversion per hook (a copy: the buffer never holds the caller's tensors), then views
        converted = {hook: activations[hook].detach().to(device="cpu", dtype=self.store.dtype, copy=True)
                     for hook in hooks}
        for i, clip in enumerate(clips):
            last = self._buffer[-1] if self._buffer else None
            if last is not None and last.clip == clip:
                if branch in last.branches:
                    raise ValueError(f"clip {clip!r} was already added for branch {branch!r}")
                entry = last
            else:
                if clip in self._done or clip in self._buffered:
                    raise ValueError(f"clip {clip!r} is already stored; skip the clips in "
                                     f"store.done_clips(), and add all rows of a clip together")
                if self._buffered_rows and self._buffered_rows + rows_per_clip > self.shard_rows:
                    self._flush()
                entry = _Clip(clip)
                self._buffer.append(entry)
                self._buffered.add(clip)
            for hook in hooks:
                x = converted[hook][i]
                entry.acts.setdefault(hook, []).append(x if per_frame else x.unsqueeze(0))
            entry.labels += label_rows[i]
            entry.branches.add(branch)
            self._buffered_rows += rows_per_clip

    def _branch(self, branch: str | None) -> str:
        branches = self.store.branches
        if branch is None:
            if len(branches) != 1:
                raise ValueError(f"this store holds branches {branches}; pass branch=...")
            return branches[0]
        if branch not in branches:
            raise ValueError(f"unknown branch {branch!r}; this store holds {branches}")
        return branch

    def _check_shape(self, hook: str, shape: tuple[int, ...]) -> None:
        known = self._partial["hook_shapes"].get(hook) or self.store._manifest["hook_shapes"].get(hook)
        if known is None:
            self._partial["hook_shapes"][hook] = list(shape)
        elif list(shape) != list(known):
            raise ValueError(f"activations[{hook!r}] rows have shape {list(shape)}, the store "
                             f"holds {list(known)}")

    @staticmethod
    def _label_rows(clip: str | int, labels: Mapping[str, Any], branch: str,
                    frames: int | None) -> list[dict[str, Any]]:
        bad = [k for k in labels if k in RESERVED_COLUMNS]
        if bad:
            raise ValueError(f"label names {bad} are reserved (the store fills "
                             f"{', '.join(RESERVED_COLUMNS)}); rename them")
        n = 1 if frames is None else frames
        rows = [{"clip": clip, "frame": -1 if frames is None else f, "branch": branch}
                for f in range(n)]
        for key, value in labels.items():
            key = str(key)
            if frames is not None and is_sequence(value):
                values = list(value.tolist() if hasattr(value, "tolist") else value)
                if len(values) != frames:
                    raise ValueError(f"label {key!r} of clip {clip!r} has {len(values)} values "
                                     f"for {frames} frames")
                for row, v in zip(rows, values):
                    row[key] = label_value(v, key)
            else:
                v = label_value(value, key)
                for row in rows:
                    row[key] = v
        return rows

    # ------------------------------------------------------------------ flushing
    def _flush(self) -> None:
        """Write the buffer as the next shard, then record it in this rank's partial manifest."""
        if not self._buffer:
            return
        tensors = {h: torch.cat([x for c in self._buffer for x in c.acts[h]]) for h in self.store.hooks}
        labels = columns_of([row for c in self._buffer for row in c.labels])
        clips = [c.clip for c in self._buffer]
        name = shard_name(self.rank, self._next_index)
        meta = {META_KEY: json.dumps(header(KIND, FORMAT_VERSION, rank=self.rank,
                                              index=self._next_index, labels=labels))}
        data = safetensors_bytes(tensors, metadata=meta)
        atomic_write_bytes(self.store.path / name, data)
        entry = {"file": name, "index": self._next_index, "rows": self._buffered_rows,
                 "bytes": len(data), "xxh3": checksum(data), "clips": clips,
                 "checksums": {h: tensor_checksum(x) for h, x in tensors.items()}}
        del data, tensors
        self._partial["shards"].append(entry)
        atomic_write_json(self.store.path / partial_name(self.rank), self._partial)
        self._done.update(clips)
        self._next_index += 1
        self._buffer, self._buffered_rows, self._buffered = [], 0, set()

    def close(self) -> None:
        """Write the remaining rows, release the rank and (``world_size == 1``) merge the manifest."""
        if self._closed:
            return
        try:
            self._flush()
            partial_path = self.store.path / partial_name(self.rank)
            if not partial_path.exists():  # nothing written: still record the rank for merge
                atomic_write_json(partial_path, self._partial)
        finally:
            self._release()
        if self.world_size == 1 and self.merge:
            self.store._manifest = merge_manifests(self.store.path)

    def abort(self) -> None:
        """Drop the buffered rows and release the rank (what an exception inside ``with`` does)."""
        self._buffer, self._buffered_rows, self._buffered = [], 0, set()
        self._release()

    def _release(self) -> None:
        self._closed = True
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self._release()
