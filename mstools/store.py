"""ActivationStore: pooled activations on disk, as safetensors shards plus a JSON manifest.

A store is a directory::

    manifest.json                  merged manifest: configuration, shard list, labels table
    rank000.manifest.json          per-writer (per-rank) partial manifest: its complete shards
    rank000-00000.safetensors      shard: one tensor per hook [rows, ...] + its labels (metadata)
    rank000-00001.safetensors ...

Only safetensors and JSON are written (no pickle). Every file is written atomically (temp file in the
same directory, fsync, ``os.replace``), so an interruption leaves either the old or the new file.

Rows. One row per stored example: a clip (pooled over time), or a (clip, frame) pair when the pooling
is per frame. The labels table has ``clip``, ``frame`` (-1 unless per-frame), ``branch`` (CFG branch,
``"cond"``/``"uncond"``) and the caller's label columns. Frames follow :mod:`mstools.timeline`:
frame ``f`` is aligned to input step ``f + K - 1``, the step that completes it.

Writing. ``store.writer(shard_rows=..., rank=r)`` buffers whole clips and writes a shard whenever the
next clip would push the buffer past ``shard_rows`` rows, so memory does not grow with the number of
clips. A shard and then the rank's partial manifest are replaced atomically; only clips in complete
shards count as done (:meth:`ActivationStore.done_clips`), so a run stopped anywhere (an exception, a
kill, a half-written temp file) resumes by skipping those clips and ends with the same store, bit for
bit and in the same order. Several writers (``torchrun`` ranks) each write their own shards and partial
manifest; :meth:`ActivationStore.merge` joins them in a deterministic order (rank, then shard, or the
clip order the caller gives).

Reading is lazy: ``store.labels`` comes from the manifest; ``store.features(hook)`` reads only that
hook's tensors; ``store.iter_batches(hook, rows)`` reads slices for out-of-core use.

Example:

>>> import tempfile, torch
>>> from mstools.pooling import Pooling
>>> root = tempfile.mkdtemp()
>>> store = ActivationStore.create(root + "/acts", fingerprint="testbed@abc", pooling=Pooling("mean"),
...                                hooks={"blocks.0.hook_resid_post": [8]}, num_codebooks=4,
...                                frame_rate=50.0)
>>> with store.writer(shard_rows=2) as w:
...     w.add(["a", "b", "c"], {"blocks.0.hook_resid_post": torch.randn(3, 8)},
...           [{"genre": "jazz"}, {"genre": "rock"}, {"genre": "jazz"}])
>>> len(store), store.features("blocks.0.hook_resid_post").shape
(3, torch.Size([3, 8]))
>>> store.labels["genre"].tolist(), sorted(store.done_clips())
(['jazz', 'rock', 'jazz'], ['a', 'b', 'c'])
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from .fileio import atomic_write_bytes, atomic_write_json, sha256_file
from safetensors import safe_open
from safetensors.torch import save as _safetensors_bytes

from mstools.pooling import Pooling

try:  # advisory per-rank lock; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["ActivationStore", "StoreWriter", "StoreError", "StoreIntegrityError",
           "FORMAT", "FORMAT_VERSION", "ALIGNMENT"]

FORMAT = "mstools.activation_store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ALIGNMENT = {
    "convention": "mstools.timeline",
    "step": "LM input step s holds codebook k of frame s - 1 - k (delay pattern)",
    "frame": "per-frame rows hold the activation at the completing step f + K - 1",
    "seconds": "a step's time is step / frame_rate",
}
RESERVED_COLUMNS = ("clip", "frame", "branch")

_SHARD_RE = re.compile(r"^rank(\d{3})-(\d{5})\.safetensors$")
_PARTIAL_RE = re.compile(r"^rank(\d{3})\.manifest\.json$")
_META_KEY = "mstools"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


class StoreError(RuntimeError):
    """A store cannot be opened, created or written as asked; the message says what to do."""


class StoreIntegrityError(StoreError):
    """One or more shards are missing, truncated or corrupt.

    Attributes:
        problems: ``{shard file name: what is wrong}``.
    """

    def __init__(self, message: str, problems: Mapping[str, str]):
        super().__init__(message)
        self.problems = dict(problems)


# ----------------------------------------------------------------------------- file helpers

def _read_json(path: Path, what: str, hint: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"{what} {path} does not exist; {hint}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoreError(f"{what} {path} is not valid JSON ({err}); it is truncated or damaged. "
                         f"{hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path} is not an mstools activation-store manifest "
                         f"(missing 'format': {FORMAT!r}). {hint}")
    if data.get("version") != FORMAT_VERSION:
        raise StoreError(f"{path} has store format version {data.get('version')!r}; this mstools "
                         f"reads version {FORMAT_VERSION}. Rebuild the store with this version.")
    return data


def _shard_name(rank: int, index: int) -> str:
    return f"rank{rank:03d}-{index:05d}.safetensors"


def _partial_name(rank: int) -> str:
    return f"rank{rank:03d}.manifest.json"


# ----------------------------------------------------------------------------- value helpers

def _dtype_name(dtype: torch.dtype | str) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported store dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return name


def _clip_id(value: Any) -> str | int:
    """A clip id as a JSON scalar: ``str`` or ``int`` (numpy/torch integers accepted)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise TypeError(f"clip ids must be str or int, got {value!r} ({type(value).__name__})")
    return value if isinstance(value, str) else int(value)


def _label_value(value: Any, column: str) -> Any:
    """A label value as a JSON scalar (str, int, float, bool or None)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise TypeError(f"label {column!r} must be a scalar, got an array {value!r}") from None
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"label {column!r} must be str, int, float, bool or None, "
                    f"got {value!r} ({type(value).__name__})")


def _is_sequence(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        return getattr(value, "ndim", 1) > 0
    return isinstance(value, (list, tuple))


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Row dicts -> columnar dict (union of keys in first-seen order, missing values None)."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(key, None)
    return {name: [row.get(name) for row in rows] for name in names}


def _num_rows(columns: Mapping[str, list]) -> int:
    return len(next(iter(columns.values()))) if columns else 0


# ----------------------------------------------------------------------------- the store

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
            pooling: a :class:`~mstools.pooling.Pooling`, a mode name, or its JSON dict.
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
            "dtype": _dtype_name(dtype),
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
            _check_same_config(store._manifest, config, f"the store at {path}")
            return store
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, **config, **_empty_contents()}
        atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ActivationStore":
        """Open an existing store (reads only its manifest).

        Raises:
            StoreError: no store there, or a manifest that is invalid JSON (e.g. truncated).
        """
        path = Path(path)
        hint = (f"If a merge was interrupted, rebuild it with ActivationStore.merge({str(path)!r}); "
                f"if the store was never created, use ActivationStore.create(...).")
        manifest = _read_json(path / MANIFEST, "the store manifest", hint)
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
        return _DTYPES[self._manifest["dtype"]]

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
        """Labels table, one row per stored row: ``clip``, ``frame``, ``branch``, caller columns."""
        columns = self._manifest["labels"]
        if not columns:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in RESERVED_COLUMNS})
        return pd.DataFrame(columns)

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

    def _open_shard(self, index: int):
        name = self._manifest["shards"][index]["file"]
        try:
            return safe_open(str(self._path / name), framework="pt")
        except FileNotFoundError:
            raise StoreIntegrityError(
                f"shard {name} is missing from {self._path}; run store.verify(repair=True) and "
                f"resume the writer to recompute its clips", {name: "missing"}) from None
        except Exception as err:  # safetensors raises its own error types for damaged headers
            raise StoreIntegrityError(
                f"shard {name} cannot be read ({err}); it is truncated or corrupt: run "
                f"store.verify(repair=True) (or delete it) and resume the writer",
                {name: f"unreadable: {err}"}) from None

    def features(self, hook: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """All rows of one hook, in the order of :attr:`labels`; reads only that hook's tensors.

        Args:
            hook: a stored hook name.
            dtype: dtype of the result (``None``: the stored dtype, bit for bit).

        Returns:
            Tensor ``[N, ...]`` (``...`` = the hook's row shape).

        Example:
            >>> X = store.features("blocks.3.hook_resid_post")      # doctest: +SKIP
            >>> y = store.labels["genre"]                             # doctest: +SKIP
        """
        shape = self._row_shape(hook)
        dtype = self.dtype if dtype is None else dtype
        out = torch.empty((len(self), *shape), dtype=dtype)
        shard_of = torch.tensor(self._manifest["locations"]["shard"], dtype=torch.long)
        row_of = torch.tensor(self._manifest["locations"]["row"], dtype=torch.long)
        for index in range(len(self._manifest["shards"])):
            where = (shard_of == index).nonzero().squeeze(1)
            if where.numel() == 0:
                continue
            with self._open_shard(index) as f:
                t = f.get_tensor(hook)
            out[where] = t[row_of[where]].to(dtype)
        return out

    def iter_batches(self, hook: str, rows: int = 4096,
                     dtype: torch.dtype | None = torch.float32) -> Iterator[torch.Tensor]:
        """Yield ``[<=rows, ...]`` tensors of one hook, in order, reading one slice at a time.

        Memory holds one batch plus at most one shard's contiguous span per batch.

        Example:
            >>> total = sum(b.sum(0) for b in store.iter_batches("hook_embed", rows=512))  # doctest: +SKIP
        """
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        shape = self._row_shape(hook)
        dtype = self.dtype if dtype is None else dtype
        shard_of = torch.tensor(self._manifest["locations"]["shard"], dtype=torch.long)
        row_of = torch.tensor(self._manifest["locations"]["row"], dtype=torch.long)
        for start in range(0, len(self), rows):
            s_idx, r_idx = shard_of[start:start + rows], row_of[start:start + rows]
            out = torch.empty((len(s_idx), *shape), dtype=dtype)
            for index in torch.unique(s_idx).tolist():
                where = (s_idx == index).nonzero().squeeze(1)
                local = r_idx[where]
                lo, hi = int(local.min()), int(local.max()) + 1
                with self._open_shard(index) as f:
                    span = f.get_slice(hook)[lo:hi]
                out[where] = span[local - lo].to(dtype)
            yield out

    # ------------------------------------------------------------------ writing
    def writer(self, shard_rows: int = 1024, rank: int = 0, world_size: int = 1) -> "StoreWriter":
        """A writer for rank ``rank`` (use it as a context manager, or call ``close()``).

        Args:
            shard_rows: rows per shard (memory holds at most this many rows plus one clip).
            rank: this writer's rank (``torchrun``'s ``RANK``); each rank owns its shard files.
            world_size: number of ranks; with 1, ``close()`` also merges the manifest. With more,
                call :meth:`merge` once every rank has closed.
        """
        return StoreWriter(self, shard_rows=shard_rows, rank=rank, world_size=world_size)

    def done_clips(self) -> set[str | int]:
        """Clip ids stored in complete shards (of every rank, merged or not): skip these on resume.

        A shard whose file is missing or has the wrong size does not count.
        """
        done: set[str | int] = set()
        for entry in self._all_entries().values():
            path = self._path / entry["file"]
            if path.is_file() and path.stat().st_size == entry["bytes"]:
                done.update(entry["clips"])
        return done

    def _partials(self) -> dict[int, dict]:
        """Per-rank partial manifests, by rank.

        A rank whose partial manifest file is gone but whose shards the merged manifest lists gets
        one rebuilt from those entries, so neither a merge nor a resumed writer forgets them.
        """
        out = {}
        for p in sorted(self._path.glob("rank*.manifest.json")):
            m = _PARTIAL_RE.match(p.name)
            if m:
                out[int(m.group(1))] = _read_json(p, "the partial manifest", _partial_hint(p))
        rebuilt: dict[int, dict] = {}
        for entry in self._manifest.get("shards", []):
            rank = entry["rank"]
            if rank not in out:
                if rank not in rebuilt:
                    rebuilt[rank] = _new_partial(self._manifest, rank)
                rebuilt[rank]["shards"].append({k: v for k, v in entry.items() if k != "rank"})
        return {**out, **rebuilt}

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
            root = _read_json(path / MANIFEST, "the store manifest", "")
        except StoreError:
            root = None  # rebuilt from the partial manifests below
        probe = cls(path, root or {"shards": []})
        partials = probe._partials()
        if root is None and not partials:
            raise StoreError(f"{path} has neither a valid {MANIFEST} nor partial manifests; "
                             f"it is not a store (create one with ActivationStore.create)")
        config = {k: (root or next(iter(partials.values()))["config"])[k] for k in _CONFIG_KEYS}
        hook_shapes = dict(config["hook_shapes"])
        for rank, partial in partials.items():
            _check_same_config(partial["config"], config, f"rank {rank}'s partial manifest",
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
                labels = _shard_labels(path, entry)
                n = _num_rows(labels)
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
            order = [_clip_id(c) for c in order]
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

        columns = _columns(rows)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, **config,
                    "clip_order": order, "shards": shards, "labels": columns,
                    "locations": {"shard": shard_col, "row": row_col}, "num_rows": len(rows)}
        atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    # ------------------------------------------------------------------ integrity
    def verify(self, repair: bool = False) -> dict[str, Any]:
        """Check every shard (merged or not): present, right size, sha256, tensor names/shapes/dtypes.

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
                by_rank.setdefault(int(_SHARD_RE.match(name).group(1)), []).append(name)
            for rank, names in sorted(by_rank.items()):
                with _rank_lock(self._path, rank):
                    partial = self._partials().get(rank)
                    if partial is not None:
                        partial["shards"] = [s for s in partial["shards"] if s["file"] not in names]
                        atomic_write_json(self._path / _partial_name(rank), partial)
                    for name in names:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._path / name)
                    removed += names
            self._manifest = type(self).merge(self._path)._manifest
        return {"shards": len(entries), "rows": len(self), "removed": sorted(removed)}

    def _check_shard(self, entry: Mapping[str, Any]) -> str | None:
        """What is wrong with one shard, or None."""
        path = self._path / entry["file"]
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"truncated or altered: {size} bytes on disk, {entry['bytes']} expected"
        if sha256_file(path) != entry["sha256"]:
            return "corrupt: sha256 does not match the manifest"
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
                    if sl.get_dtype() != _SAFETENSORS_DTYPES[self._manifest["dtype"]]:
                        return f"{hook} has dtype {sl.get_dtype()}, expected {self._manifest['dtype']}"
        except Exception as err:
            return f"unreadable: {err}"
        return None


_CONFIG_KEYS = ("fingerprint", "hooks", "hook_shapes", "pooling", "dtype", "branches",
                "num_codebooks", "frame_rate", "alignment", "meta")


def _empty_contents() -> dict[str, Any]:
    return {"clip_order": None, "shards": [], "labels": {},
            "locations": {"shard": [], "row": []}, "num_rows": 0}


def _new_partial(manifest: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """An empty partial manifest for ``rank`` with the store's configuration."""
    config = {k: manifest[k] for k in _CONFIG_KEYS}
    return {"format": FORMAT, "version": FORMAT_VERSION, "rank": rank, "config": config,
            "hook_shapes": dict(config["hook_shapes"]), "shards": []}


def _partial_hint(path: Path) -> str:
    return (f"Delete {path.name} and the shards of that rank (rank*-*.safetensors with the same "
            f"rank number), then resume that rank's writer.")


def _check_same_config(have: Mapping[str, Any], want: Mapping[str, Any], what: str,
                       ignore: Iterable[str] = ()) -> None:
    """Raise if two store configurations differ (hook shapes may be unknown on one side)."""
    diffs = []
    for key in _CONFIG_KEYS:
        if key in ignore:
            continue
        a, b = have.get(key), want.get(key)
        if key == "hook_shapes":
            if set(a) != set(b) or any(a[h] is not None and b[h] is not None and a[h] != b[h]
                                       for h in a):
                diffs.append(key)
        elif a != b:
            diffs.append(key)
    if diffs:
        raise StoreError(f"{what} was created with a different {', '.join(diffs)} "
                         f"(have {[have.get(k) for k in diffs]}, asked {[want.get(k) for k in diffs]}); "
                         f"use a new path for a new configuration")


def _shard_labels(path: Path, entry: Mapping[str, Any]) -> dict[str, list]:
    """Labels (columnar) stored in a shard's safetensors metadata."""
    name = entry["file"]
    try:
        with safe_open(str(path / name), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
    except FileNotFoundError:
        raise StoreIntegrityError(f"shard {name} listed in a partial manifest is missing; run "
                                  f"store.verify(repair=True), then resume that rank's writer",
                                  {name: "missing"}) from None
    except Exception as err:
        raise StoreIntegrityError(f"shard {name} cannot be read ({err}); run "
                                  f"store.verify(repair=True), then resume that rank's writer",
                                  {name: f"unreadable: {err}"}) from None
    labels = meta["labels"]
    if _num_rows(labels) != entry["rows"]:
        raise StoreIntegrityError(f"shard {name} holds {_num_rows(labels)} label rows, the manifest "
                                  f"says {entry['rows']}; run store.verify(repair=True)",
                                  {name: "label rows do not match"})
    return labels


@contextlib.contextmanager
def _rank_lock(path: Path, rank: int) -> Iterator[None]:
    """Hold an exclusive advisory lock on one rank of a store (fails at once if already held)."""
    if fcntl is None:  # pragma: no cover - Windows: no locking
        yield
        return
    fd = os.open(path / f"rank{rank:03d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"rank {rank} of {path} is held by another writer; give each "
                             f"process its own rank, or wait for the other writer to close") from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the writer

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

    def __init__(self, store: ActivationStore, shard_rows: int, rank: int, world_size: int):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        if not 0 <= rank < max(world_size, 1) or rank > 999:
            raise ValueError(f"rank must be in [0, world_size={world_size}) and < 1000, got {rank}")
        self.store, self.shard_rows, self.rank, self.world_size = store, shard_rows, rank, world_size
        self._lock = _rank_lock(store.path, rank)
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
        self._buffered_rows = 0

    # ------------------------------------------------------------------ set-up
    def _load_partial(self) -> dict:
        """Read this rank's partial manifest (or start one), dropping shards that did not survive."""
        path = self.store.path
        for pattern in (f".rank{self.rank:03d}-*.tmp", f".{_partial_name(self.rank)}.*.tmp"):
            for stale in path.glob(pattern):  # half-written files of an interrupted run
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        manifest = self.store._manifest
        partial_path = path / _partial_name(self.rank)
        partial = self.store._partials().get(self.rank) or _new_partial(manifest, self.rank)
        _check_same_config(partial["config"], manifest, f"rank {self.rank}'s partial manifest",
                           ignore=("hook_shapes",))
        kept, lost = [], []
        for entry in partial["shards"]:
            f = path / entry["file"]
            if f.is_file() and f.stat().st_size == entry["bytes"]:
                kept.append(entry)
            else:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                lost.append(entry["file"])
        if lost:
            warnings.warn(f"shard(s) {', '.join(lost)} are missing or truncated; their clips are "
                          f"no longer done and will be recomputed", stacklevel=3)
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
        clips = [_clip_id(c) for c in (clip_ids.tolist() if hasattr(clip_ids, "tolist") else clip_ids)]
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

        for i, clip in enumerate(clips):
            last = self._buffer[-1] if self._buffer else None
            if last is not None and last.clip == clip:
                if branch in last.branches:
                    raise ValueError(f"clip {clip!r} was already added for branch {branch!r}")
                entry = last
            else:
                if clip in self._done or any(b.clip == clip for b in self._buffer):
                    raise ValueError(f"clip {clip!r} is already stored; skip the clips in "
                                     f"store.done_clips(), and add all rows of a clip together")
                if self._buffered_rows and self._buffered_rows + rows_per_clip > self.shard_rows:
                    self._flush()
                entry = _Clip(clip)
                self._buffer.append(entry)
            for hook in hooks:
                # copy: a slice would keep the caller's whole batch alive in the buffer
                x = activations[hook][i].detach().to(device="cpu", dtype=self.store.dtype, copy=True)
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
            if frames is not None and _is_sequence(value):
                values = list(value.tolist() if hasattr(value, "tolist") else value)
                if len(values) != frames:
                    raise ValueError(f"label {key!r} of clip {clip!r} has {len(values)} values "
                                     f"for {frames} frames")
                for row, v in zip(rows, values):
                    row[key] = _label_value(v, key)
            else:
                v = _label_value(value, key)
                for row in rows:
                    row[key] = v
        return rows

    # ------------------------------------------------------------------ flushing
    def _flush(self) -> None:
        """Write the buffer as the next shard, then record it in this rank's partial manifest."""
        if not self._buffer:
            return
        tensors = {h: torch.cat([x for c in self._buffer for x in c.acts[h]]) for h in self.store.hooks}
        labels = _columns([row for c in self._buffer for row in c.labels])
        clips = [c.clip for c in self._buffer]
        name = _shard_name(self.rank, self._next_index)
        meta = {_META_KEY: json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "rank": self.rank,
                                       "index": self._next_index, "labels": labels})}
        data = _safetensors_bytes(tensors, metadata=meta)
        atomic_write_bytes(self.store.path / name, data)
        entry = {"file": name, "index": self._next_index, "rows": self._buffered_rows,
                 "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "clips": clips}
        del data, tensors
        self._partial["shards"].append(entry)
        atomic_write_json(self.store.path / _partial_name(self.rank), self._partial)
        self._done.update(clips)
        self._next_index += 1
        self._buffer, self._buffered_rows = [], 0

    def close(self) -> None:
        """Write the remaining rows, release the rank and (``world_size == 1``) merge the manifest."""
        if self._closed:
            return
        try:
            self._flush()
            partial_path = self.store.path / _partial_name(self.rank)
            if not partial_path.exists():  # nothing written: still record the rank for merge
                atomic_write_json(partial_path, self._partial)
        finally:
            self._release()
        if self.world_size == 1:
            self.store._manifest = ActivationStore.merge(self.store.path)._manifest

    def abort(self) -> None:
        """Drop the buffered rows and release the rank (what an exception inside ``with`` does)."""
        self._buffer, self._buffered_rows = [], 0
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
