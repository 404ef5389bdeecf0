"""ActivationStore: open, read (lazily, by hook or in batches), verify and repair a store."""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch
from safetensors import safe_open

from mstools.core.errors import DamagedStoreError, StoreError, StoreIntegrityError
from mstools.core.fileio import atomic_write_json, header
from mstools.data.pooling import Pooling
from mstools.data.store.format import (ALIGNMENT, DTYPES, FORMAT_VERSION, KIND, MANIFEST,
                                       RESERVED_COLUMNS, SAFETENSORS_DTYPES, SHARD_RE, check_same_config,
                                       checksum, dtype_name, empty_contents, file_checksum, partial_name,
                                       rank_lock, read_json, read_partials, shard_tensors,
                                       tensor_checksum)
from mstools.data.store.merge import merge_manifests
from mstools.data.store.writer import StoreWriter

__all__ = ["ActivationStore"]


class ActivationStore:
    """Pooled activations of several hooks on disk, with a labels table (see module docstring).

    Create with :meth:`create`, open with :meth:`open`, write with :meth:`writer`, join several
    writers with :meth:`merge`, check with :meth:`verify`.

    Attributes (read-only properties): ``path``, ``hooks``, ``hook_shapes``, ``pooling``, ``dtype``,
    ``fingerprint``, ``branches``, ``num_codebooks``, ``frame_rate``, ``meta``, ``labels``,
    ``shards``; ``len(store)`` is the number of rows.
    """

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self._path = Path(path)
        self._manifest = manifest
        self._labels: pd.DataFrame | None = None          # read from labels.json when asked for
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None  # from index.safetensors

    @property
    def _manifest(self) -> dict:
        return self.__manifest

    @_manifest.setter
    def _manifest(self, value: dict) -> None:  # a new manifest (merge, reload): forget what was read
        self.__manifest = value
        self._labels = None
        self._index = None

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike, *, fingerprint: str,
               hooks: Sequence[str] | Mapping[str, Sequence[int] | None],
               pooling: Pooling | str | Mapping[str, Any], dtype: torch.dtype | str = torch.float32,
               branches: str | Sequence[str] = ("cond",), num_codebooks: int | None = None,
               frame_rate: float | None = None, meta: Mapping[str, Any] | None = None,
               exist_ok: bool = False) -> "ActivationStore":
        """Create an empty store at ``path`` (a directory) and write its manifest.

        Args:
            path: directory of the store (created).
            fingerprint: a string naming the model and its weights (the caller's choice, e.g.
                ``"testbed@<sha256 of weights>"``); stores from different models never mix.
            hooks: hook names, or ``{hook: row shape}`` (shape without the batch axis, e.g. ``[D]``
                or ``[H, D/H]``); unknown shapes are taken from the first rows written.
            pooling: a :class:`~mstools.data.pooling.Pooling`, a mode name, or its JSON dict.
            dtype: dtype of the stored tensors (``float32``, ``float16``, ``bfloat16``, ``float64``).
            branches: CFG branch names rows may carry (``"cond"``, ``"uncond"``).
            num_codebooks: K of the model (recorded for the step/frame convention).
            frame_rate: frames per second of the model (recorded for the same).
            meta: free JSON-serialisable information kept in the manifest.
            exist_ok: if the store exists with the same configuration, open it (to resume or to
                add ranks) instead of failing.

        Returns:
            The opened store.

        Example:
            >>> import tempfile
            >>> s = ActivationStore.create(tempfile.mkdtemp() + "/s", fingerprint="m",
            ...                            hooks=["hook_embed"], pooling="mean")
            >>> len(s), s.hooks
            (0, ['hook_embed'])
        """
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("fingerprint must be a non-empty string naming the model and weights")
        if isinstance(hooks, str):
            hooks = [hooks]
        shapes = dict(hooks) if isinstance(hooks, Mapping) else {h: None for h in hooks}
        if not shapes:
            raise ValueError("a store needs at least one hook")
        hook_shapes = {str(h): (None if s is None else [int(d) for d in s]) for h, s in shapes.items()}
        if isinstance(pooling, str):
            pooling = Pooling(pooling)
        elif isinstance(pooling, Mapping):
            pooling = Pooling.from_json(pooling)
        elif not isinstance(pooling, Pooling):
            raise TypeError(f"pooling must be a Pooling, a mode name or its JSON dict, got {pooling!r}")
        branches = [branches] if isinstance(branches, str) else [str(b) for b in branches]
        if not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct names, got {branches!r}")
        config = {
            "fingerprint": fingerprint,
            "hooks": list(hook_shapes),
            "hook_shapes": hook_shapes,
            "pooling": pooling.to_json(),
            "dtype": dtype_name(dtype),
            "branches": branches,
            "num_codebooks": None if num_codebooks is None else int(num_codebooks),
            "frame_rate": None if frame_rate is None else float(frame_rate),
            "alignment": ALIGNMENT,
            "meta": dict(meta or {}),
        }
        try:  # the manifest must survive a JSON round trip unchanged
            config = json.loads(json.dumps(config, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable (str, numbers, lists, dicts): {err}") from None

        path = Path(path)
        if (path / MANIFEST).exists():
            if not exist_ok:
                raise StoreError(f"a store already exists at {path}; open it with "
                                 f"ActivationStore.open(path), or pass exist_ok=True to resume it")
            store = cls.open(path)
            try:
                check_same_config(store._manifest, config, f"the store at {path}")
            except StoreError:
                if not store._is_empty():
                    raise
                # nothing was written yet (e.g. a run refused after it created the folder): the
                # empty store takes the new configuration; no data is lost
                manifest = {**header(KIND, FORMAT_VERSION), **config, **empty_contents()}
                atomic_write_json(path / MANIFEST, manifest)
                return cls(path, manifest)
            return store
        path.mkdir(parents=True, exist_ok=True)
        manifest = {**header(KIND, FORMAT_VERSION), **config, **empty_contents()}
        atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ActivationStore":
        """Open an existing store (reads only its manifest).

        Raises:
            StoreError: no store there, or a manifest that is invalid JSON (e.g. truncated).
        """
        path = Path(path)
        hint = (f"If a merge was interrupted, or the store was written by an older mstools, rebuild "
                f"the manifest with ActivationStore.merge({str(path)!r}); if the store was never "
                f"created, use ActivationStore.create(...).")
        manifest = read_json(path / MANIFEST, "the store manifest", hint)
        store = cls(path, manifest)
        unmerged = store._unmerged_shards()
        if unmerged:
            warnings.warn(f"{len(unmerged)} shard(s) of {path} are written but not merged into "
                          f"{MANIFEST} (e.g. {unmerged[0]}); call ActivationStore.merge(path) "
                          f"once every writer has closed", stacklevel=2)
        return store

    def reload(self) -> "ActivationStore":
        """Re-read the manifest from disk (after another process merged) and return ``self``."""
        self._manifest = type(self).open(self._path)._manifest
        return self

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        """Directory of the store."""
        return self._path

    @property
    def hooks(self) -> list[str]:
        """Hook names, in the order given at creation."""
        return list(self._manifest["hooks"])

    @property
    def hook_shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Row shape per hook (without the row axis); ``None`` until rows are written."""
        return {h: (None if s is None else tuple(s)) for h, s in self._manifest["hook_shapes"].items()}

    @property
    def pooling(self) -> Pooling:
        """How the stored rows were pooled over time."""
        return Pooling.from_json(self._manifest["pooling"])

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the tensors on disk."""
        return DTYPES[self._manifest["dtype"]]

    @property
    def fingerprint(self) -> str:
        """The model fingerprint given at creation."""
        return self._manifest["fingerprint"]

    @property
    def branches(self) -> list[str]:
        """CFG branch names rows may carry."""
        return list(self._manifest["branches"])

    @property
    def num_codebooks(self) -> int | None:
        """K of the model, if given."""
        return self._manifest["num_codebooks"]

    @property
    def frame_rate(self) -> float | None:
        """Frames per second of the model, if given."""
        return self._manifest["frame_rate"]

    @property
    def meta(self) -> dict[str, Any]:
        """The caller's free information given at creation (a copy)."""
        return json.loads(json.dumps(self._manifest["meta"]))

    @property
    def shards(self) -> list[dict[str, Any]]:
        """Merged shard entries (file, rank, index, rows, bytes, sha256, clips), in reading order."""
        return [dict(s) for s in self._manifest["shards"]]

    @property
    def labels(self) -> pd.DataFrame:
        """Labels table, one row per stored row: ``clip``, ``frame``, ``branch``, caller columns.

        Read from ``labels.json`` on first use (checked against the manifest's checksum), so opening
        a store, or streaming its rows, does not hold the table in memory."""
        if self._labels is None:
            if not len(self):
                self._labels = pd.DataFrame({c: pd.Series(dtype=object) for c in RESERVED_COLUMNS})
            else:
                data = self._side_file("labels_file")
                self._labels = pd.DataFrame(json.loads(data))
        return self._labels

    def _side_file(self, key: str) -> bytes:
        entry = self._manifest.get(key)
        if not entry:
            raise StoreError(f"{self._path}: the manifest names no {key.replace('_', ' ')}; rebuild it "
                             f"with ActivationStore.merge({str(self._path)!r})")
        try:
            data = (self._path / entry["file"]).read_bytes()
        except FileNotFoundError:
            raise DamagedStoreError(f"{self._path / entry['file']} is missing; rebuild it with "
                             f"ActivationStore.merge({str(self._path)!r})") from None
        if checksum(data) != entry["xxh3"]:
            raise DamagedStoreError(f"{self._path / entry['file']} does not match the manifest (a merge was "
                             f"interrupted, or the file was changed); rebuild it with "
                             f"ActivationStore.merge({str(self._path)!r})")
        return data

    def _locations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(shard [N], row [N]) of every stored row, int64, read from ``index.safetensors``."""
        if self._index is None:
            if not len(self):
                empty = torch.zeros(0, dtype=torch.long)
                self._index = (empty, empty)
            else:
                from safetensors.torch import load as load_tensors  # lazy: only this reader needs it
                t = load_tensors(self._side_file("index_file"))
                self._index = (t["shard"].long(), t["row"].long())
        return self._index

    def __len__(self) -> int:
        return int(self._manifest["num_rows"])

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self._path)!r}, rows={len(self)}, hooks={self.hooks}, "
                f"pooling={self.pooling}, dtype={self._manifest['dtype']})")

    # ------------------------------------------------------------------ reading
    def _row_shape(self, hook: str) -> tuple[int, ...]:
        if hook not in self._manifest["hook_shapes"]:
            raise KeyError(f"hook {hook!r} is not in this store; stored hooks: {self.hooks}")
        shape = self._manifest["hook_shapes"][hook]
        if shape is None:
            raise StoreError(f"no rows are stored for {hook!r} yet (shape unknown); write some first")
        return tuple(shape)

    def _tensor(self, index: int, hook: str) -> torch.Tensor:
        """One hook's tensor of shard ``index``, checked against its recorded checksum."""
        return shard_tensors(self._path, self._manifest["shards"][index], [hook])[hook]

    def features(self, hook: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """All rows of one hook, in the order of :attr:`labels`; reads only that hook's tensors.

        Every tensor read is checked against the checksum written with it: a shard whose bytes
        changed raises :class:`~mstools.core.errors.StoreIntegrityError` instead of being served.

        Args:
            hook: a stored hook name.
            dtype: dtype of the result (``None``: the stored dtype, bit for bit).

        Returns:
            Tensor ``[N, ...]`` (``...`` = the hook's row shape).

        Example:
            >>> X = store.features("blocks.3.hook_resid_post")
            >>> y = store.labels["genre"]
            >>> len(X) == len(y)
            True
        """
        shape = self._row_shape(hook)
        dtype = self.dtype if dtype is None else dtype
        out = torch.empty((len(self), *shape), dtype=dtype)
        shard_of, row_of = self._locations()
        order = torch.argsort(shard_of, stable=True)
        bounds = torch.searchsorted(shard_of[order], torch.arange(len(self._manifest["shards"]) + 1))
        for index in range(len(self._manifest["shards"])):
            where = order[int(bounds[index]):int(bounds[index + 1])]
            if where.numel() == 0:
                continue
            t = self._tensor(index, hook)
            out[where] = t[row_of[where]].to(dtype)
        return out

    def iter_batches(self, hook: str, rows: int = 4096,
                     dtype: torch.dtype | None = torch.float32) -> Iterator[torch.Tensor]:
        """Yield ``[<=rows, ...]`` tensors of one hook, in order.

        Each shard is read (and checked) once while its rows are being served: memory holds one
        batch plus the shards the current batch touches, whatever the size of the store.

        Example:
            >>> [len(b) for b in store.iter_batches("blocks.0.hook_resid_post", rows=5)]
            [5, 3]
        """
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        shape = self._row_shape(hook)
        dtype = self.dtype if dtype is None else dtype
        shard_of, row_of = self._locations()
        held: dict[int, torch.Tensor] = {}
        for start in range(0, len(self), rows):
            s_idx, r_idx = shard_of[start:start + rows], row_of[start:start + rows]
            out = torch.empty((len(s_idx), *shape), dtype=dtype)
            wanted = torch.unique(s_idx).tolist()
            held = {i: t for i, t in held.items() if i in wanted}  # drop shards this batch leaves
            for index in wanted:
                if index not in held:
                    held[index] = self._tensor(index, hook)
                where = (s_idx == index).nonzero().squeeze(1)
                out[where] = held[index][r_idx[where]].to(dtype)
            yield out

    # ------------------------------------------------------------------ writing
    def writer(self, shard_rows: int = 1024, rank: int = 0, world_size: int = 1,
               merge: bool = True) -> "StoreWriter":
        """A writer for rank ``rank`` (use it as a context manager, or call ``close()``).

        Args:
            shard_rows: rows per shard (memory holds at most this many rows plus one clip).
            rank: this writer's rank (``torchrun``'s ``RANK``); each rank owns its shard files.
            world_size: number of ranks; with 1, ``close()`` also merges the manifest (unless
                ``merge=False``: the caller merges, e.g. in a row order of its own). With more,
                call :meth:`merge` once every rank has closed.
        """
        return StoreWriter(self, shard_rows=shard_rows, rank=rank, world_size=world_size, merge=merge)

    def done_clips(self) -> set[str | int]:
        """Clip ids stored in complete shards (of every rank, merged or not): skip these on resume.

        A shard whose file is missing, has the wrong size or whose bytes changed (checksum) does not
        count, so a resumed writer recomputes its clips.
        """
        done: set[str | int] = set()
        for entry in self._all_entries().values():
            path = self._path / entry["file"]
            if path.is_file() and path.stat().st_size == entry["bytes"] and (
                    "xxh3" not in entry or file_checksum(path) == entry["xxh3"]):
                done.update(entry["clips"])
        return done

    def _is_empty(self) -> bool:
        """No rows merged, no shard written by any rank."""
        return len(self) == 0 and not any(p["shards"] for p in self._partials().values())

    def _partials(self) -> dict[int, dict]:
        """Per-rank partial manifests, by rank (see :func:`read_partials`)."""
        return read_partials(self._path, self._manifest)

    def _all_entries(self) -> dict[str, dict]:
        """Shard entries of the merged manifest and of every partial manifest, by file name."""
        entries = {s["file"]: s for s in self._manifest["shards"]}
        for partial in self._partials().values():
            entries.update({s["file"]: s for s in partial["shards"]})
        return entries

    def _unmerged_shards(self) -> list[str]:
        merged = {s["file"] for s in self._manifest["shards"]}
        return sorted(f for p in self._partials().values() for f in (s["file"] for s in p["shards"])
                      if f not in merged)

    # ------------------------------------------------------------------ merge
    @classmethod
    def merge(cls, path: str | os.PathLike,
              order: Sequence[str | int] | None = None) -> "ActivationStore":
        """Merge every rank's partial manifest into ``manifest.json``; return the opened store.

        See :func:`mstools.data.store.merge.merge_manifests` (row order, remembered order, errors).
        """
        return cls(Path(path), merge_manifests(path, order))

    # ------------------------------------------------------------------ integrity
    def verify(self, repair: bool = False) -> dict[str, Any]:
        """Check every shard (merged or not): present, right size, checksums of the file and of every
        tensor, tensor names/shapes/dtypes; and the merged labels and index files.

        Args:
            repair: delete the bad shards and drop them from the manifests (merged again), so that
                :meth:`done_clips` no longer lists their clips and a resumed writer recomputes them.
                Refused while a writer holds the rank.

        Returns:
            ``{"shards": checked, "rows": merged rows, "removed": [files removed by repair]}``.

        Raises:
            StoreIntegrityError: (without ``repair``) naming every bad shard and what is wrong.
        """
        entries = self._all_entries()
        problems = {name: p for name, entry in entries.items()
                    if (p := self._check_shard(entry)) is not None}
        if problems and not repair:
            listing = "\n".join(f"  {name}: {why}" for name, why in sorted(problems.items()))
            raise StoreIntegrityError(
                f"{len(problems)} bad shard(s) in {self._path}:\n{listing}\n"
                f"Delete them (or call store.verify(repair=True)) and resume the writer: their "
                f"clips are then no longer in store.done_clips() and are recomputed.", problems)
        removed = []
        if problems:
            by_rank: dict[int, list[str]] = {}
            for name in problems:
                by_rank.setdefault(int(SHARD_RE.match(name).group(1)), []).append(name)
            for rank, names in sorted(by_rank.items()):
                with rank_lock(self._path, rank):
                    partial = self._partials().get(rank)
                    if partial is not None:
                        partial["shards"] = [s for s in partial["shards"] if s["file"] not in names]
                        atomic_write_json(self._path / partial_name(rank), partial)
                    for name in names:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._path / name)
                    removed += names
            self._manifest = merge_manifests(self._path)
        if len(self):
            try:
                self._side_file("labels_file")
                self._side_file("index_file")
            except StoreError:
                if not repair:
                    raise
                self._manifest = merge_manifests(self._path)
        return {"shards": len(entries), "rows": len(self), "removed": sorted(removed)}

    def _check_shard(self, entry: Mapping[str, Any]) -> str | None:
        """What is wrong with one shard, or None."""
        path = self._path / entry["file"]
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"truncated or altered: {size} bytes on disk, {entry['bytes']} expected"
        if "xxh3" in entry and file_checksum(path) != entry["xxh3"]:
            return "corrupt: its bytes do not match the checksum in the manifest"
        try:
            with safe_open(str(path), framework="pt") as f:
                names = set(f.keys())
                if names != set(self.hooks):
                    return f"holds tensors {sorted(names)}, expected {sorted(self.hooks)}"
                for hook in self.hooks:
                    sl = f.get_slice(hook)
                    shape, want = list(sl.get_shape()), self._manifest["hook_shapes"].get(hook)
                    if shape[0] != entry["rows"] or (want is not None and shape[1:] != want):
                        return f"{hook} has shape {shape}, expected [{entry['rows']}, *{want}]"
                    if sl.get_dtype() != SAFETENSORS_DTYPES[self._manifest["dtype"]]:
                        return f"{hook} has dtype {sl.get_dtype()}, expected {self._manifest['dtype']}"
                    want_sum = (entry.get("checksums") or {}).get(hook)
                    if want_sum is not None and tensor_checksum(f.get_tensor(hook)) != want_sum:
                        return f"{hook} does not match its checksum"
        except Exception as err:
            return f"unreadable: {err}"
        return None


