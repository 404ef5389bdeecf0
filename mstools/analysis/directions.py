"""Directions in activation space: from probe weights, differences of class means, PCA; similarity; files.

A :class:`Direction` is data: a unit vector ``[D]`` at one hook, what it points to (``label``), how it
was made (``method``), the raw norm before normalisation and free-form source metadata.

>>> import torch
>>> X = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
>>> d = diff_means(X, ["jazz", "jazz", "rock", "rock"], "jazz", hook="blocks.0.hook_resid_post")
>>> d.vector.tolist(), round(d.norm, 4)
([0.7071067690849304, -0.7071067690849304], 2.8284)
>>> d.name
'diff_means:blocks.0.hook_resid_post:jazz'
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mstools.analysis.probes import Probe, fit_probes
from mstools.analysis.projections import pca
from mstools.core.errors import ArtifactError
from mstools.core.fileio import load_artifact, save_artifact

__all__ = [
    "Direction",
    "from_probe",
    "from_probes",
    "diff_means",
    "diff_means_all",
    "pca_directions",
    "random_direction",
    "cosine_matrix",
    "save_directions",
    "load_directions",
    "recipes",
    "select",
    "RECIPES",
]

#: The direction recipes :func:`recipes` knows: difference of class means, ridge and logistic probe
#: weights.
RECIPES = ("diff_means", "ridge", "logistic")

Tensor = torch.Tensor
KIND = "directions"
FORMAT_VERSION = 2


@dataclass
class Direction:
    """A unit direction at one hook.

    Attributes:
        vector: ``[D]`` float32, unit L2 norm.
        hook: hook name (e.g. ``"blocks.19.hook_resid_post"``).
        label: what it points to, e.g. ``"genre=jazz"`` or ``"genre=jazz-vs-rock"``.
        method: ``"logistic" | "ridge" | "seed" | "diff_means" | "pca" | "random"``.
        norm: L2 norm of the raw vector before normalisation (e.g. the distance between class means).
        meta: source metadata (target, classes, counts, probe settings, ...); JSON-serialisable.
    """

    vector: Tensor
    hook: str
    label: str
    method: str
    norm: float
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, Tensor) or self.vector.ndim != 1:
            got = getattr(self.vector, "shape", self.vector)
            raise ValueError(f"Direction.vector must be a 1-D tensor [D], got {got}")
        if not bool(torch.isfinite(self.vector).all()):
            raise ValueError(f"Direction {self.label!r} at {self.hook!r} has non-finite entries")

    @property
    def name(self) -> str:
        """``"{method}:{hook}:{label}"``: unique enough to index tables."""
        return f"{self.method}:{self.hook}:{self.label}"

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    @classmethod
    def from_vector(cls, v: Tensor | np.ndarray, hook: str, label: str, method: str,
                    meta: Mapping[str, Any] | None = None) -> "Direction":
        """Normalise ``v [D]`` (norm computed in float64) and record its raw norm."""
        v64 = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).detach().reshape(-1).double()
        n = float(v64.norm())
        if not np.isfinite(n) or n == 0.0:
            raise ValueError(f"cannot make a direction {label!r} at {hook!r} from a vector of norm {n}")
        return cls((v64 / n).float(), hook, label, method, n, dict(meta or {}))


# ----------------------------------------------------------------------------------------------
# From probes
# ----------------------------------------------------------------------------------------------
def from_probe(probe: Probe, label: str | None = None, minus: str | None = None) -> Direction:
    """Direction of a probe's weight column for class ``label`` (minus class ``minus``'s column).

    Weights are in raw activation space (standardisation folded in, see :class:`mstools.analysis.probes.Probe`).
    For multinomial logistic and one-hot ridge the columns sum to zero, so a column already reads
    "this class versus the rest". A continuous probe has one column (``label`` ignored).

    >>> from mstools.analysis.probes import Probe
    >>> p = Probe("h", "genre", "ridge", torch.tensor([[2.0, -2.0], [0.0, 0.0]]), torch.zeros(2), ["a", "b"])
    >>> from_probe(p, "a").vector.tolist(), from_probe(p, "a", minus="b").norm
    ([1.0, 0.0], 4.0)
    """
    meta = {"target": probe.target, "classes": probe.classes, "source": f"probe:{probe.method}",
            "input_norm": probe.input_norm, **_jsonable(probe.meta)}
    if probe.classes is None:
        return Direction.from_vector(probe.column(), probe.hook, probe.target, probe.method, meta)
    if label is None:
        raise ValueError(f"name a class: label= one of {probe.classes}")
    v = probe.column(label).double()
    name = f"{probe.target}={label}"
    if minus is not None:
        v = v - probe.column(minus).double()
        name = f"{probe.target}={label}-vs-{minus}"
    return Direction.from_vector(v, probe.hook, name, probe.method, meta)


def from_probes(
    probes: Mapping[str, Probe], label: str | None = None, minus: str | None = None
) -> dict[str, Direction]:
    """:func:`from_probe` for every hook of ``{hook: Probe}`` (as returned by ``fit_probes``)."""
    return {h: from_probe(p, label, minus) for h, p in probes.items()}


# ----------------------------------------------------------------------------------------------
# Difference of class means
# ----------------------------------------------------------------------------------------------
def _labels_array(labels: Sequence | np.ndarray | pd.Series, n: int) -> np.ndarray:
    arr = labels.to_numpy() if isinstance(labels, pd.Series) else np.asarray(labels, dtype=object)
    if len(arr) != n:
        raise ValueError(f"labels has {len(arr)} rows, X has {n}")
    return np.array([None if (x is None or (isinstance(x, float) and np.isnan(x))) else str(x) for x in arr],
                    dtype=object)


def _class_means(X: Tensor, lab: np.ndarray) -> dict[str, tuple[Tensor, int]]:
    X = X.reshape(X.shape[0], -1)
    out = {}
    for c in sorted({x for x in lab if x is not None}):
        idx = torch.as_tensor(np.flatnonzero(lab == c))
        out[c] = (X.index_select(0, idx).double().mean(0), int(idx.numel()))
    return out


def diff_means(
    X: Tensor,
    labels: Sequence | np.ndarray | pd.Series,
    label: str,
    minus: str | None = None,
    *,
    hook: str = "",
    target: str | None = None,
    balanced: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> Direction:
    """Mean of class ``label`` minus the mean of the other classes (or of class ``minus``).

    ``X [N, D]``, ``labels [N]`` (class names; None/NaN rows are ignored). ``balanced=True``: "the other
    classes" is the mean of their class means (class sizes do not matter); ``False``: the mean of all
    other rows. Means are accumulated in float64.
    """
    lab = _labels_array(labels, X.shape[0])
    means = _class_means(X, lab)
    label, minus = str(label), None if minus is None else str(minus)
    for c in (label,) if minus is None else (label, minus):
        if c not in means:
            raise KeyError(f"class {c!r} has no rows; classes are {sorted(means)}")
    mu_a, n_a = means[label]
    if minus is not None:
        mu_b, n_b = means[minus]
        others = [minus]
    else:
        others = [c for c in means if c != label]
        if not others:
            raise ValueError(f"only one class ({label!r}) present: nothing to contrast with")
        if balanced:
            mu_b = torch.stack([means[c][0] for c in others]).mean(0)
        else:
            idx = torch.as_tensor(np.flatnonzero(np.array([x is not None and x != label for x in lab])))
            mu_b = X.reshape(X.shape[0], -1).index_select(0, idx).double().mean(0)
        n_b = sum(means[c][1] for c in others)
    prefix = f"{target}=" if target else ""
    name = f"{prefix}{label}" if minus is None else f"{prefix}{label}-vs-{minus}"
    info = {"target": target, "positive": label, "negative": others, "n_positive": n_a, "n_negative": n_b,
            "balanced": balanced, "source": "diff_means", **dict(meta or {})}
    return Direction.from_vector(mu_a - mu_b, hook, name, "diff_means", info)


def diff_means_all(
    X: Tensor, labels: Sequence | np.ndarray | pd.Series, *, hook: str = "", target: str | None = None,
    balanced: bool = True,
) -> dict[str, Direction]:
    """:func:`diff_means` of every class against the rest -> ``{class: Direction}``."""
    lab = _labels_array(labels, X.shape[0])
    classes = sorted({x for x in lab if x is not None})
    return {c: diff_means(X, lab, c, hook=hook, target=target, balanced=balanced) for c in classes}


def pca_directions(X: Tensor, k: int = 3, *, hook: str = "") -> list[Direction]:
    """The top ``k`` principal components of ``X [N, D]`` as directions ``pc1..pck`` (``norm`` = the
    component's standard deviation; signs: the largest-magnitude loading is positive)."""

    p = pca(X, k)
    return [
        Direction(p.components[i].float().clone(), hook, f"pc{i + 1}", "pca",
                  float(p.explained_variance[i]) ** 0.5,
                  {"explained_variance_ratio": float(p.explained_variance_ratio[i]), "source": "pca"})
        for i in range(p.components.shape[0])
    ]


def random_direction(dim: int, seed: int = 0, *, hook: str = "") -> Direction:
    """A uniformly random unit direction (a control for steering: same norm, no meaning)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    return Direction.from_vector(v, hook, f"random{seed}", "random", {"seed": seed, "source": "random"})


# ----------------------------------------------------------------------------------------------
# Similarity
# ----------------------------------------------------------------------------------------------
def _as_list(directions: Sequence[Direction] | Mapping[Any, Direction] | Direction) -> list[Direction]:
    if isinstance(directions, Direction):
        return [directions]
    if isinstance(directions, Mapping):
        return list(directions.values())
    return list(directions)


def cosine_matrix(directions: Sequence[Direction] | Mapping[Any, Direction]) -> pd.DataFrame:
    """Cosine similarity between every pair -> square DataFrame indexed by ``Direction.name``
    (NaN for pairs of different widths).

    >>> a = Direction(torch.tensor([1.0, 0.0]), "h", "a", "pca", 1.0)
    >>> b = Direction(torch.tensor([0.6, 0.8]), "h", "b", "pca", 1.0)
    >>> cosine_matrix([a, b]).round(2).values.tolist()
    [[1.0, 0.6], [0.6, 1.0]]
    """
    ds = _as_list(directions)
    names = [d.name for d in ds]
    n = len(ds)
    M = np.full((n, n), np.nan)
    by_dim: dict[int, list[int]] = {}
    for i, d in enumerate(ds):
        by_dim.setdefault(d.dim, []).append(i)
    for idx in by_dim.values():
        V = torch.stack([ds[i].vector.double() for i in idx])
        V = V / V.norm(dim=1, keepdim=True)
        S = (V @ V.T).numpy()
        M[np.ix_(idx, idx)] = S
    return pd.DataFrame(M, index=names, columns=names)


# ----------------------------------------------------------------------------------------------
# Files: safetensors with JSON metadata
# ----------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def save_directions(
    path: str | os.PathLike, directions: Sequence[Direction] | Mapping[Any, Direction] | Direction
) -> Path:
    """Write directions to one safetensors file, atomically, with mstools' artifact header.

    Tensors ``"0", "1", ...`` hold the vectors; the header holds a JSON list of the fields of each
    direction (hook, label, method, norm, meta) and a sha256 of the tensors, checked on load.
    """
    ds = _as_list(directions)
    if not ds:
        raise ValueError("nothing to save: no directions")
    tensors = {str(i): d.vector.detach().contiguous().clone() for i, d in enumerate(ds)}
    entries = [{"key": str(i), "hook": d.hook, "label": d.label, "method": d.method, "norm": d.norm,
                "meta": _jsonable(d.meta)} for i, d in enumerate(ds)]
    return save_artifact(path, tensors, KIND, FORMAT_VERSION, {"directions": entries})


def recipes(features: Mapping[str, Tensor], labels: pd.DataFrame, target: str,
            methods: Sequence[str] = RECIPES, *, classes: Sequence[str] | None = None,
            meta: Mapping[str, Any] | None = None) -> list[Direction]:
    """Directions toward every class of ``target`` at every hook, by every recipe, in one call.

    ``diff_means``: :func:`diff_means` (class mean minus the mean of the other class means);
    ``ridge`` / ``logistic``: the class's weight column of a probe fitted on all rows by
    :func:`mstools.analysis.probes.fit_probes` (ridge penalty chosen by cross-validation), via
    :func:`from_probe`. ``meta`` is added to every direction's metadata (e.g. the model fingerprint
    and how many clips the features came from), so a file of directions says what it was made from.

    Args:
        features: ``{hook: [N, ...]}`` pooled activations (e.g. from
            :func:`mstools.data.labelled.labelled_features` or a store).
        labels: N rows with a ``clip`` column and the ``target`` column.
        methods: any of :data:`RECIPES`.
        classes: the classes to make directions for (default: all of them, sorted).

    Returns:
        A list ordered by hook, then method, then class; pick one with :func:`select`.

    >>> X = {"h": torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])}
    >>> lab = pd.DataFrame({"clip": range(4), "g": ["a", "a", "b", "b"]})
    >>> [d.name for d in recipes(X, lab, "g", methods=("diff_means",))]
    ['diff_means:h:g=a', 'diff_means:h:g=b']
    """
    bad = [m for m in methods if m not in RECIPES]
    if bad:
        raise ValueError(f"unknown recipe(s) {bad}; choose from {RECIPES}")
    present = sorted({str(x) for x in labels[target].dropna()})
    wanted = list(classes) if classes is not None else present
    missing = [c for c in wanted if c not in present]
    if missing:
        raise KeyError(f"classes {missing} have no rows of {target!r}; classes are {present}")
    fitted = {m: fit_probes(dict(features), labels, target, m) for m in methods if m != "diff_means"}
    out = []
    for hook, X in features.items():
        for m in methods:
            for c in wanted:
                d = (diff_means(X, labels[target], c, hook=hook, target=target) if m == "diff_means"
                     else from_probe(fitted[m][hook], c))
                d.meta.update(_jsonable(dict(meta or {})))
                out.append(d)
    return out


def select(directions: Sequence[Direction], *, hook: str | None = None, method: str | None = None,
           label: str | None = None) -> Direction:
    """The one direction with this hook, method and label (``"jazz"`` matches ``"genre=jazz"``).

    Raises:
        KeyError: none or several match (the message lists what there is).
    """
    def ok(d: Direction) -> bool:
        return ((hook is None or d.hook == hook) and (method is None or d.method == method)
                and (label is None or d.label == label or d.label.split("=", 1)[-1] == label))
    hits = [d for d in directions if ok(d)]
    if len(hits) != 1:
        have = sorted({(d.hook, d.method, d.label) for d in directions})[:12]
        raise KeyError(f"{len(hits)} directions match hook={hook!r}, method={method!r}, label={label!r}; "
                       f"there are e.g. {have}")
    return hits[0]


def load_directions(path: str | os.PathLike) -> list[Direction]:
    """Read a file written by :func:`save_directions` (bit-exact).

    Raises:
        FileNotFoundError: no file at ``path``.
        ArtifactError: corrupt, truncated, foreign or of another format version (names the file).
    """
    tensors, head = load_artifact(path, KIND, FORMAT_VERSION,
                                  hint="Re-create it with mstools.analysis.directions.save_directions.")
    try:
        return [Direction(tensors[e["key"]], e["hook"], e["label"], e["method"], float(e["norm"]),
                          e.get("meta", {})) for e in head["directions"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path} has invalid direction metadata ({e}); re-create the file") from None
