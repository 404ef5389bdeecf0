"""Atomic file writes, checksums and the one artifact header, shared by every module that writes files.

A write goes to a temp file in the destination folder, is flushed and fsynced, then renamed over the
destination (``os.replace``): an interruption leaves the old file or the new one, never half of one.

Every artifact mstools writes carries one header: ``{"format": "mstools.<kind>", "version": N, ...}``
— at the top level of a JSON file (a store manifest), or as JSON under the safetensors metadata key
``"mstools"`` (steering vectors, directions, store shards), where it also holds the sha256 of the
tensors (:func:`tensor_digest`), so flipped bytes are refused on load.

>>> import tempfile, torch
>>> path = tempfile.mkdtemp() + "/w.safetensors"
>>> _ = save_artifact(path, {"w": torch.arange(3.0)}, "example", 1, {"note": "hi"})
>>> tensors, header = load_artifact(path, "example", 1)
>>> tensors["w"].tolist(), header["note"]
([0.0, 1.0, 2.0], 'hi')
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mstools.core.errors import ArtifactError, DamagedArtifactError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "save_safetensors", "sha256_file", "tensor_digest", "header", "check_header",
           "save_artifact", "load_artifact", "META_KEY"]

#: safetensors metadata key holding an artifact's JSON header.
META_KEY = "mstools"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. some network filesystems)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temp file onto ``path`` (removed on any failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Save tensors (detached, contiguous, on CPU) as safetensors, atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (sorted by name).

    >>> tensor_digest({"a": torch.zeros(2)}) == tensor_digest({"a": torch.zeros(2)})
    True
    """
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def header(kind: str, version: int, **fields: Any) -> dict[str, Any]:
    """The header every artifact carries: ``{"format": "mstools.<kind>", "version": N, **fields}``.

    >>> header("steering_vector", 2)["format"]
    'mstools.steering_vector'
    """
    return {"format": f"mstools.{kind}", "version": int(version), **fields}


def check_header(data: Any, kind: str, version: int, path: str | os.PathLike, hint: str) -> dict:
    """Check a header read from ``path``; raise :class:`ArtifactError` naming the file and ``hint``
    (what to do) when it is not a ``kind`` artifact of ``version``."""
    want = f"mstools.{kind}"
    what = kind.replace("_", " ")
    if not isinstance(data, dict) or "format" not in data:
        raise ArtifactError(f"{path} is not an mstools {what} file (it has no mstools header). {hint}")
    if data.get("format") != want:
        raise ArtifactError(f"{path} is not an mstools {what} file (its header says "
                            f"{data.get('format')!r}). {hint}")
    if data.get("version") != version:
        raise ArtifactError(f"{path} has mstools {what} format version {data.get('version')!r}; this "
                            f"mstools reads version {version}. {hint}")
    return data


def save_artifact(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], kind: str,
                  version: int, fields: Mapping[str, Any]) -> Path:
    """Write ``tensors`` as safetensors with the artifact header (``fields`` plus a tensor digest)
    under the metadata key ``"mstools"``, atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    head = header(kind, version, sha256=tensor_digest(flat), **dict(fields))
    return save_safetensors(flat, path, metadata={META_KEY: json.dumps(head)})


def load_artifact(path: str | os.PathLike, kind: str, version: int,
                  hint: str = "Re-create it from its source.") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_artifact`: ``(tensors, header)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ArtifactError: unreadable (truncated, not safetensors), another kind or version, or tensors
            that do not match the header's digest (flipped bytes). The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise DamagedArtifactError(f"{path} is not a readable safetensors file (truncated or corrupt: "
                            f"{str(e).splitlines()[0][:200]}). {hint}") from None
    try:
        head = json.loads(metadata.get(META_KEY, "null"))
    except json.JSONDecodeError:
        raise DamagedArtifactError(f"{path} has a damaged mstools header. {hint}") from None
    check_header(head, kind, version, path, hint)
    if tensor_digest(tensors) != head.get("sha256"):
        raise DamagedArtifactError(f"{path} is corrupt: its tensors do not match the checksum stored in "
                            f"the file. {hint}")
    return tensors, head
