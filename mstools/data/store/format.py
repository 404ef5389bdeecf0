"""The activation store's file format: names, manifest headers, label values, configuration checks.

See :mod:`mstools.data.store` for the layout of a store on disk.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import xxhash
from safetensors import safe_open

from mstools.core.errors import DamagedStoreError, StoreError, StoreIntegrityError
from mstools.core.fileio import META_KEY, check_header

try:  # advisory per-rank lock; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

KIND = "activation_store"
FORMAT = "mstools.activation_store"
FORMAT_VERSION = 2
#: Versions whose shards and partial manifests a merge can read (and upgrade).
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
LABELS = "labels-{}.json"          # the merged labels table (columnar JSON), read when asked for
INDEX = "index-{}.safetensors"     # shard and row of every stored row (int32), read when rows are read
# (named by their checksum, so a store object opened before a later merge still reads its own)
ALIGNMENT = {
    "convention": "mstools.core.timeline",
    "step": "LM input step s holds codebook k of frame s - 1 - k (delay pattern)",
    "frame": "per-frame rows hold the activation at the completing step f + K - 1",
    "seconds": "a step's time is step / frame_rate",
}
RESERVED_COLUMNS = ("clip", "frame", "branch")

SHARD_RE = re.compile(r"^rank(\d{3})-(\d{5})\.safetensors$")
PARTIAL_RE = re.compile(r"^rank(\d{3})\.manifest\.json$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


# ----------------------------------------------------------------------------- file helpers

def read_json(path: Path, what: str, hint: str, versions: Sequence[int] = (FORMAT_VERSION,)) -> dict:
    """Read a store manifest (merged or partial), checking its header; errors say what to do."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedStoreError(f"{what} {path} does not exist; {hint}") from None
    except UnicodeDecodeError:
        raise DamagedStoreError(f"{what} {path} is not text (damaged or overwritten). {hint}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedStoreError(f"{what} {path} is not valid JSON ({err}); it is truncated or damaged. "
                         f"{hint}") from None
    if isinstance(data, dict) and data.get("version") in versions:
        versions_ok = data["version"]
    else:
        versions_ok = versions[-1]
    try:
        return check_header(data, KIND, versions_ok, path, hint)
    except ValueError as err:
        raise StoreError(str(err)) from None


def checksum(data: bytes | memoryview) -> str:
    """xxh3-64 of ``data`` as hex (what shard entries record: fast enough to check on every read).

    >>> checksum(b"abc")
    '78af5f94892f3950'
    """
    return xxhash.xxh3_64_hexdigest(data)


def tensor_checksum(t: torch.Tensor) -> str:
    """:func:`checksum` of a tensor's bytes (C order)."""
    t = t.detach().contiguous().cpu()
    return checksum(t.view(torch.uint8).numpy().data if t.numel() else b"")


def file_checksum(path: Path, chunk: int = 1 << 24) -> str:
    """:func:`checksum` of a whole file, read in chunks."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(rank: int, index: int) -> str:
    return f"rank{rank:03d}-{index:05d}.safetensors"


def partial_name(rank: int) -> str:
    return f"rank{rank:03d}.manifest.json"


# ----------------------------------------------------------------------------- value helpers

def dtype_name(dtype: torch.dtype | str) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unsupported store dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return name


def clip_id(value: Any) -> str | int:
    """A clip id as a JSON scalar: ``str`` or ``int`` (numpy/torch integers accepted)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise TypeError(f"clip ids must be str or int, got {value!r} ({type(value).__name__})")
    return value if isinstance(value, str) else int(value)


def label_value(value: Any, column: str) -> Any:
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


def is_sequence(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        return getattr(value, "ndim", 1) > 0
    return isinstance(value, (list, tuple))


def columns_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Row dicts -> columnar dict (union of keys in first-seen order, missing values None)."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(key, None)
    return {name: [row.get(name) for row in rows] for name in names}


def num_rows(columns: Mapping[str, list]) -> int:
    return len(next(iter(columns.values()))) if columns else 0


CONFIG_KEYS = ("fingerprint", "hooks", "hook_shapes", "pooling", "dtype", "branches",
                "num_codebooks", "frame_rate", "alignment", "meta")


def empty_contents() -> dict[str, Any]:
    return {"clip_order": None, "shards": [], "labels_file": None, "index_file": None, "num_rows": 0}


def new_partial(manifest: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """An empty partial manifest for ``rank`` with the store's configuration."""
    config = {k: manifest[k] for k in CONFIG_KEYS}
    return {"format": FORMAT, "version": FORMAT_VERSION, "rank": rank, "config": config,
            "hook_shapes": dict(config["hook_shapes"]), "shards": []}


def shard_tensors(path: Path, entry: Mapping[str, Any], hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensors ``hooks`` of one shard, each checked against the checksum its entry records.

    Raises:
        StoreIntegrityError: the shard is missing, unreadable, or a tensor's bytes changed.
    """
    name = entry["file"]
    try:
        with safe_open(str(path / name), framework="pt") as f:
            out = {h: f.get_tensor(h) for h in hooks}
    except FileNotFoundError:
        raise StoreIntegrityError(f"shard {name} is missing from {path}; run store.verify(repair=True) "
                                  f"and resume the writer to recompute its clips", {name: "missing"}) from None
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise StoreIntegrityError(f"shard {name} cannot be read ({str(err)[:200]}); it is truncated or "
                                  f"corrupt: run store.verify(repair=True) (or delete it) and resume "
                                  f"the writer", {name: f"unreadable: {err}"}) from None
    sums = entry.get("checksums") or {}
    for h, x in out.items():
        if h in sums and tensor_checksum(x) != sums[h]:
            raise StoreIntegrityError(f"shard {name} of {path} is corrupt: the bytes of {h!r} changed "
                                      f"since they were written; run store.verify(repair=True) and "
                                      f"resume the writer to recompute its clips",
                                      {name: f"{h} does not match its checksum"})
    return out


def partial_hint(path: Path) -> str:
    return (f"Delete {path.name} and the shards of that rank (rank*-*.safetensors with the same "
            f"rank number), then resume that rank's writer.")


def check_same_config(have: Mapping[str, Any], want: Mapping[str, Any], what: str,
                       ignore: Iterable[str] = ()) -> None:
    """Raise, naming every difference, if two store configurations differ (hook shapes may be
    unknown on one side; ``meta`` is compared key by key, e.g. the backend)."""
    diffs = []
    for key in CONFIG_KEYS:
        if key in ignore:
            continue
        a, b = have.get(key), want.get(key)
        if key == "hook_shapes":
            if set(a) != set(b) or any(a[h] is not None and b[h] is not None and a[h] != b[h]
                                       for h in a):
                diffs.append(f"  hook shapes: {a!r} vs {b!r}")
        elif key == "meta":
            a, b = dict(a or {}), dict(b or {})
            for m in (a, b):  # a store without a backend entry was written with audiocraft
                m.setdefault("backend", "audiocraft")
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    diffs.append(f"  {k}: the store has {a.get(k)!r}, this run asks for {b.get(k)!r}")
        elif a != b:
            name = "model" if key == "fingerprint" else key
            diffs.append(f"  {name}: the store has {a!r}, this run asks for {b!r}")
    if diffs:
        raise StoreError(f"{what} holds a store made with other settings:\n" + "\n".join(diffs)
                         + "\nA store keeps one configuration: write to another folder, or rerun "
                           "with the store's settings to resume it.")


def shard_labels(path: Path, entry: Mapping[str, Any]) -> dict[str, list]:
    """Labels (columnar) stored in a shard's safetensors metadata."""
    name = entry["file"]
    try:
        with safe_open(str(path / name), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
    except FileNotFoundError:
        raise StoreIntegrityError(f"shard {name} listed in a partial manifest is missing; run "
                                  f"store.verify(repair=True), then resume that rank's writer",
                                  {name: "missing"}) from None
    except Exception as err:
        raise StoreIntegrityError(f"shard {name} cannot be read ({err}); run "
                                  f"store.verify(repair=True), then resume that rank's writer",
                                  {name: f"unreadable: {err}"}) from None
    labels = meta["labels"]
    if num_rows(labels) != entry["rows"]:
        raise StoreIntegrityError(f"shard {name} holds {num_rows(labels)} label rows, the manifest "
                                  f"says {entry['rows']}; run store.verify(repair=True)",
                                  {name: "label rows do not match"})
    return labels


@contextlib.contextmanager
def rank_lock(path: Path, rank: int) -> Iterator[None]:
    """Hold an exclusive advisory lock on one rank of a store (fails at once if already held).

    The lock file exists only while the rank is held: it is removed on release. A process that
    opened it before the removal finds, after locking, that the path no longer names its file, and
    tries again, so two writers never hold one rank.
    """
    if fcntl is None:  # pragma: no cover - Windows: no locking
        yield
        return
    lock = path / f".rank{rank:03d}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"rank {rank} of {path} is held by another writer; give each "
                             f"process its own rank, or wait for the other writer to close") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # removed by its last holder while we waited: take the new file
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def read_partials(path: Path, manifest: Mapping[str, Any]) -> dict[int, dict]:
    """Per-rank partial manifests of the store at ``path``, by rank.

    A rank whose partial manifest file is gone but whose shards the merged ``manifest`` lists gets
    one rebuilt from those entries, so neither a merge nor a resumed writer forgets them.
    """
    out = {}
    for p in sorted(path.glob("rank*.manifest.json")):
        m = PARTIAL_RE.match(p.name)
        if m:
            out[int(m.group(1))] = read_json(p, "the partial manifest", partial_hint(p),
                                             versions=READABLE_VERSIONS)
    rebuilt: dict[int, dict] = {}
    for entry in manifest.get("shards", []):
        rank = entry["rank"]
        if rank not in out:
            if rank not in rebuilt:
                rebuilt[rank] = new_partial(manifest, rank)
            rebuilt[rank]["shards"].append({k: v for k, v in entry.items() if k != "rank"})
    return {**out, **rebuilt}
