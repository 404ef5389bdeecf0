"""Steering vectors: one direction per hook, made for one model, as plain data.

A :class:`SteeringVector` maps hook names to directions: ``[D]`` for residual / attention / MLP
hooks, ``[H, Dh]`` for a head-level ``blocks.{l}.attn.hook_z`` (one direction in the ``H * Dh``
space of all heads; put zeros in the heads you do not want to touch). It remembers the model
fingerprint it was made for, a human-readable ``source`` ("diff_means:genre=jazz-vs-rest"), its
``units`` ("unit": every direction has L2 norm 1; "raw": as computed) and free-form ``meta``.

Vectors combine like tensors, per hook; a hook present in only one operand is carried over as if
the other held zeros there, and vectors made for different models are refused:

>>> import torch
>>> jazz = SteeringVector({"blocks.3.hook_resid_post": torch.tensor([3.0, 4.0])}, "tiny-v1",
...                       source="diff_means:genre=jazz-vs-rest")
>>> rock = SteeringVector({"blocks.3.hook_resid_post": torch.tensor([1.0, 0.0])}, "tiny-v1",
...                       source="diff_means:genre=rock-vs-rest")
>>> fusion = 0.5 * jazz + 0.5 * rock
>>> fusion["blocks.3.hook_resid_post"]
tensor([2., 2.])
>>> fusion.source
'0.5*diff_means:genre=jazz-vs-rest + 0.5*diff_means:genre=rock-vs-rest'
>>> jazz.normalized()["blocks.3.hook_resid_post"]
tensor([0.6000, 0.8000])

Files are safetensors with the non-tensor fields as JSON in the file's metadata
(``save`` writes atomically; ``load`` refuses corrupt or foreign files). Before a vector is attached
to a model, :meth:`SteeringVector.check` refuses one made for another model, a wrong size, or an
unknown hook; :func:`check_strength` refuses a NaN, infinite or non-numeric strength.
"""
from __future__ import annotations

import difflib
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mstools.analysis.directions import Direction
from mstools.core.errors import ArtifactError
from mstools.core.fileio import load_artifact, save_artifact

__all__ = ["SteeringVector", "check_strength", "KIND", "FORMAT_VERSION"]

#: Artifact kind and format version of steering-vector files (see :mod:`mstools.core.fileio`).
KIND = "steering_vector"
FORMAT_VERSION = 2
_UNITS = ("unit", "raw")


def check_strength(a: Any) -> float | Tensor:
    """Return ``a`` as a float (or a float tensor, for a sweep), refusing NaN, inf and non-numbers.

    Args:
        a: a Python/NumPy number, a 0-d tensor (returned as ``float``), or a tensor of strengths of
            any shape (returned as a float tensor, e.g. ``[N]`` for a batched sweep).

    Raises:
        TypeError: ``a`` is not a number (``None``, a string, a bool, a complex number...).
        ValueError: ``a`` (or one of its entries) is NaN or infinite.

    >>> check_strength(2)
    2.0
    >>> check_strength(float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: steering strength must be a finite number, got nan
    """
    if isinstance(a, bool) or (hasattr(a, "dtype") and str(a.dtype) in ("bool", "torch.bool")):
        raise TypeError(f"steering strength must be a real number, got the bool {a!r}")
    if isinstance(a, Tensor):
        if a.is_complex() or not (a.is_floating_point() or a.dtype in _INT_DTYPES):
            raise TypeError(f"steering strength must be a real number, got a tensor of {a.dtype}")
        if a.dim() == 0:
            return check_strength(a.item())
        a = a.detach().float()
        bad = ~torch.isfinite(a)
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()
            raise ValueError(f"steering strengths must be finite numbers; entry {where} is "
                             f"{a[tuple(where)].item()}")
        return a
    if hasattr(a, "__array__") and not isinstance(a, numbers.Number):  # numpy arrays

        arr = np.asarray(a)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"steering strength must be a real number, got an array of {arr.dtype}")
        return check_strength(torch.from_numpy(arr.astype("float64")))
    if not isinstance(a, numbers.Real):
        raise TypeError(f"steering strength must be a real number, got {type(a).__name__} {a!r}")
    value = float(a)
    if not math.isfinite(value):
        raise ValueError(f"steering strength must be a finite number, got {value}")
    return value


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _wrap(source: str) -> str:
    """Parenthesise a composite source so combined sources read unambiguously."""
    return f"({source})" if (" + " in source or " - " in source) else source


def _fmt(k: float) -> str:
    return f"{k:g}"


@dataclass(eq=False)
class SteeringVector:
    """Directions per hook for one model.

    Attributes:
        directions: hook name -> direction, ``[D]`` (resid/attn/mlp hooks) or ``[H, Dh]``
            (``attn.hook_z``). Floating point, finite; stored detached.
        fingerprint: fingerprint of the model the vector was made for.
        source: how it was made, e.g. ``"diff_means:genre=jazz-vs-rest"`` (shown in result tables).
        units: ``"unit"`` (each direction has L2 norm 1, checked) or ``"raw"``.
        meta: free-form JSON-serialisable metadata (layer, label counts, seed, ...).

    Example:
        >>> v = SteeringVector({"hook_embed": torch.ones(4)}, "tiny-v1", source="ones")
        >>> v.normalized().units
        'unit'
        >>> v.check("tiny-v1", {"hook_embed": (4,)})
    """

    directions: dict[str, Tensor]
    fingerprint: str
    source: str = ""
    units: str = "raw"
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ValueError("a SteeringVector needs at least one direction: "
                             "directions={'blocks.3.hook_resid_post': tensor[D], ...}")
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise ValueError(f"fingerprint must be the non-empty model fingerprint string, "
                             f"got {self.fingerprint!r}")
        if self.units not in _UNITS:
            raise ValueError(f"units must be one of {_UNITS}, got {self.units!r}")
        if not isinstance(self.source, str):
            raise TypeError(f"source must be a string, got {type(self.source).__name__}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict, got {type(self.meta).__name__}")
        dirs: dict[str, Tensor] = {}
        for hook, v in self.directions.items():
            if not isinstance(hook, str):
                raise TypeError(f"hook names must be strings, got {hook!r}")
            if not isinstance(v, Tensor):
                raise TypeError(f"direction for {hook!r} must be a torch.Tensor, "
                                f"got {type(v).__name__}")
            if not v.is_floating_point():
                raise TypeError(f"direction for {hook!r} must be floating point, got {v.dtype}")
            if v.dim() not in (1, 2) or v.numel() == 0:
                raise ValueError(f"direction for {hook!r} must have shape [D] or [H, Dh], "
                                 f"got {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"direction for {hook!r} contains NaN or inf")
            dirs[hook] = v.detach()
        self.directions = dirs
        if self.units == "unit":
            for hook, v in dirs.items():
                n = float(torch.linalg.vector_norm(v.double()))
                tol = 1e-2 if v.element_size() < 4 else 1e-4
                if abs(n - 1.0) > tol:
                    raise ValueError(f"units='unit' but the direction for {hook!r} has norm {n:.6g}; "
                                     f"pass units='raw' or call .normalized()")

    # ------------------------------------------------------------------ access
    @property
    def hooks(self) -> list[str]:
        """Hook names, in insertion order."""
        return list(self.directions)

    def __getitem__(self, hook: str) -> Tensor:
        try:
            return self.directions[hook]
        except KeyError:
            raise KeyError(f"no direction for hook {hook!r}; this vector has {self.hooks}") from None

    def __contains__(self, hook: object) -> bool:
        return hook in self.directions

    def __len__(self) -> int:
        return len(self.directions)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{h}: {list(v.shape)}" for h, v in self.directions.items())
        return (f"SteeringVector(source={self.source!r}, units={self.units!r}, "
                f"fingerprint={self.fingerprint!r}, directions={{{shapes}}})")

    def norms(self) -> dict[str, float]:
        """L2 norm of each direction (over all its elements)."""
        return {h: float(torch.linalg.vector_norm(v.double())) for h, v in self.directions.items()}

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "SteeringVector":
        """A copy with every direction moved/cast (``units`` kept)."""
        return SteeringVector({h: v.to(device=device, dtype=dtype) for h, v in self.directions.items()},
                              self.fingerprint, self.source, self.units, dict(self.meta))

    def normalized(self) -> "SteeringVector":
        """A copy with each direction scaled to L2 norm 1 (over all elements; Frobenius for [H, Dh]).

        Raises:
            ValueError: a direction is all zeros (it has no direction to keep).
        """
        out = {}
        for h, v in self.directions.items():
            n = torch.linalg.vector_norm(v.double())
            if float(n) == 0.0:
                raise ValueError(f"cannot normalise: the direction for {h!r} is all zeros")
            out[h] = (v.double() / n).to(v.dtype)
        return SteeringVector(out, self.fingerprint, self.source, "unit", dict(self.meta))

    # ------------------------------------------------------------------ arithmetic
    def _same_model(self, other: "SteeringVector", op: str) -> None:
        if other.fingerprint != self.fingerprint:
            raise ValueError(
                f"cannot {op} steering vectors made for different models: "
                f"{self.source or 'left'!r} is for {self.fingerprint!r}, "
                f"{other.source or 'right'!r} is for {other.fingerprint!r}")

    def _combine(self, other: "SteeringVector", sign: float, op: str) -> "SteeringVector":
        self._same_model(other, op)
        out: dict[str, Tensor] = {h: v.clone() for h, v in self.directions.items()}
        for h, w in other.directions.items():
            w = w.to(next(iter(self.directions.values())).device)
            if h in out:
                if out[h].shape != w.shape:
                    raise ValueError(f"cannot {op}: hook {h!r} has shape {tuple(out[h].shape)} on "
                                     f"the left and {tuple(w.shape)} on the right")
                out[h] = out[h] + w if sign > 0 else out[h] - w
            else:
                out[h] = w.clone() if sign > 0 else -w
        sym = "+" if sign > 0 else "-"
        return SteeringVector(out, self.fingerprint, f"{_wrap(self.source)} {sym} {_wrap(other.source)}",
                              "raw", {})

    def __add__(self, other: object) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, +1.0, "add")

    def __radd__(self, other: object) -> "SteeringVector":
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return self  # so that sum([v1, v2, ...]) works
        return NotImplemented

    def __sub__(self, other: object) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, -1.0, "subtract")

    def __neg__(self) -> "SteeringVector":
        return SteeringVector({h: -v for h, v in self.directions.items()}, self.fingerprint,
                              f"-{_wrap(self.source)}", self.units, dict(self.meta))

    def _scaled(self, k: float, source: str, divide: bool = False) -> "SteeringVector":
        dirs = {h: (v / k if divide else v * k) for h, v in self.directions.items()}
        return SteeringVector(dirs, self.fingerprint, source, "raw", {})

    def __mul__(self, k: object) -> "SteeringVector":
        if isinstance(k, SteeringVector) or not _is_scalar(k):
            return NotImplemented
        k = _scalar(k, "multiply a steering vector by")
        return self._scaled(k, f"{_fmt(k)}*{_wrap(self.source)}")

    __rmul__ = __mul__

    def __truediv__(self, k: object) -> "SteeringVector":
        if isinstance(k, SteeringVector) or not _is_scalar(k):
            return NotImplemented
        k = _scalar(k, "divide a steering vector by")
        if k == 0:
            raise ZeroDivisionError("cannot divide a steering vector by 0")
        return self._scaled(k, f"{_wrap(self.source)}/{_fmt(k)}", divide=True)

    # ------------------------------------------------------------------ model checks
    def check(self, fingerprint: str, shapes: Mapping[str, tuple]) -> None:
        """Refuse this vector for a model it does not fit.

        Args:
            fingerprint: the target model's fingerprint.
            shapes: hook name -> expected direction shape for every steerable hook of the model,
                e.g. ``{"blocks.0.hook_resid_post": (D,), "blocks.0.attn.hook_z": (H, Dh), ...}``.

        Raises:
            ValueError: made for another model (names both), a hook the model does not have (with
                close matches), or a direction of the wrong shape (hook, expected, got).
        """
        if fingerprint != self.fingerprint:
            raise ValueError(
                f"this steering vector ({self.source or 'no source'}) was made for model "
                f"{self.fingerprint!r}, not for {fingerprint!r}; recompute it on this model "
                f"(directions do not transfer between models)")
        unknown = [h for h in self.directions if h not in shapes]
        if unknown:
            hints = []
            for h in unknown:
                close = difflib.get_close_matches(h, list(shapes), n=3)
                hints.append(f"{h!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
            raise ValueError(f"unknown hook(s) for this model: {'; '.join(hints)}. "
                             f"The model has {len(shapes)} steerable hooks, e.g. "
                             f"{list(shapes)[:4]}")
        for h, v in self.directions.items():
            expected = tuple(int(s) for s in shapes[h])
            if tuple(v.shape) != expected:
                raise ValueError(f"hook {h!r}: expected a direction of shape {expected}, "
                                 f"got {tuple(v.shape)}")

    check_strength = staticmethod(check_strength)

    @classmethod
    def from_directions(cls, directions: "Direction | Sequence[Direction]", fingerprint: str,
                        source: str | None = None, shape: Mapping[str, tuple] | None = None,
                        meta: Mapping[str, Any] | None = None) -> "SteeringVector":
        """A unit-norm vector from :class:`~mstools.analysis.directions.Direction` s (one per hook).

        Args:
            directions: one Direction, or several at different hooks.
            fingerprint: the model's fingerprint (``model.fingerprint``).
            source: a name (default: the directions' names joined).
            shape: per-hook direction shape when it is not ``[D]`` (e.g. ``{hook: (H, Dh)}`` for
                ``attn.hook_z``; ``model.hook_shape(hook)`` gives it).

        >>> from mstools.analysis.directions import Direction
        >>> d = Direction(torch.tensor([3.0, 4.0]), "blocks.0.hook_resid_post", "jazz", "diff_means", 5.0)
        >>> SteeringVector.from_directions(d, "m").directions["blocks.0.hook_resid_post"].tolist()
        [0.6000000238418579, 0.800000011920929]
        """
        ds = [directions] if isinstance(directions, Direction) else list(directions)
        if not ds:
            raise ValueError("no directions given")
        hooks = [d.hook for d in ds]
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"one direction per hook, got hooks {hooks}")
        out = {}
        for d in ds:
            v = d.vector.float() / d.vector.float().norm()
            out[d.hook] = v.reshape(tuple((shape or {}).get(d.hook, v.shape)))
        return cls(out, fingerprint, source or " + ".join(d.name for d in ds), "unit",
                   dict(meta or {"directions": [d.name for d in ds]}))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the vector to a ``.safetensors`` file atomically, with mstools' artifact header.

        Tensors are stored under their hook names; ``fingerprint``, ``source``, ``units``, ``meta`` and
        a sha256 of the tensors go in the header. Returns the path written.

        Raises:
            TypeError: ``meta`` is not JSON-serialisable.
        """
        fields = {"fingerprint": self.fingerprint, "source": self.source, "units": self.units,
                  "meta": self.meta}
        try:
            json.dumps(fields, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"cannot save: meta must be JSON-serialisable ({e})") from None
        return save_artifact(path, self.directions, KIND, FORMAT_VERSION, fields)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "SteeringVector":
        """Read a vector written by :meth:`save` (bit-exact; no pickle involved).

        Raises:
            FileNotFoundError: no such file.
            ArtifactError: the file is corrupt (flipped bytes included), truncated, not safetensors,
                not a mstools steering vector, or of another format version.
        """
        tensors, head = load_artifact(path, KIND, FORMAT_VERSION,
                                      hint="Write vectors with SteeringVector.save.")
        try:
            fields = (head["fingerprint"], head["source"], head["units"], head["meta"])
        except KeyError as e:
            raise ArtifactError(f"{path}: steering-vector header lacks {e}; re-create the file") from None
        return cls({k: v.to(device) for k, v in tensors.items()}, *fields)


def _is_scalar(k: object) -> bool:
    if isinstance(k, bool):
        return False
    if isinstance(k, Tensor):
        return k.dim() == 0
    return isinstance(k, numbers.Real)


def _scalar(k: object, what: str) -> float:
    try:
        return check_strength(k)  # type: ignore[return-value]
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot {what} {k!r}: {e}") from None
