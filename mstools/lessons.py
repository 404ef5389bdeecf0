"""Small helpers the guided notebooks (``notebooks/``) use to show what the rest of mstools computes.

Each helper turns a result into a table a reader can look at; none of them changes how anything is
computed elsewhere.

- :func:`delay_table`        which frame each LM step holds, per codebook (the delay pattern)
- :func:`hook_shapes`        activation shape of every hook of a MusicGen architecture, without building it
- :func:`held_out_predictions`  a probe's predictions on the held-out clips of one seeded split
- :func:`label_shares`       share of each label read, per group of a steering table
- :func:`compare`            each steering trial beside its random, unsteered and prompted controls
- :func:`compare_figure`     that table as grouped bars
- :func:`probe_readout`      a fitted probe as a readout callable (class probabilities, named columns)
- :func:`first_difference`   time of the first frame where two sets of codes differ
- :func:`time_generation`    wall time per generation step and per second of audio
- :func:`text_conditioner`   what turns a prompt into the condition the LM cross-attends to
- :func:`backend_gap`        two models (e.g. two backends) on the same codes: largest gap per hook
- :func:`untrained_testbed`  the testbed's architecture with random weights, on either backend

>>> delay_table(num_codebooks=3, frames=2).values.tolist()
[[-1, 0, 1, -1], [-1, -1, 0, 1], [-1, -1, -1, 0]]
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import timeline

__all__ = ["delay_table", "hook_shapes", "held_out_predictions", "label_shares", "compare", "compare_figure",
           "probe_readout", "first_difference", "time_generation", "text_conditioner", "backend_gap",
           "untrained_testbed"]


def delay_table(num_codebooks: int, frames: int, codebook_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Frame held by each (codebook, LM input step) under MusicGen's delay pattern.

    Step ``s`` holds codebook ``k`` of frame ``s - 1 - k`` (:func:`mstools.timeline.frame_of_step`);
    entries outside ``0 .. frames - 1`` are the special token and are shown as ``-1``.

    Args:
        num_codebooks: K.
        frames: T, the number of audio frames (the table has ``T + K - 1`` steps, as
            :meth:`mstools.hooked.HookedMusicGen.to_sequence`).
        codebook_names: row labels (default ``"codebook 0"`` ...).

    Returns:
        DataFrame ``[K, T + K - 1]`` of ints: rows = codebooks, columns = steps.

    >>> delay_table(2, 3, ["pitch", "drums"]).loc["drums"].tolist()
    [-1, -1, 0, 1]
    """
    if num_codebooks < 1 or frames < 1:
        raise ValueError(f"need num_codebooks >= 1 and frames >= 1, got {num_codebooks}, {frames}")
    names = list(codebook_names) if codebook_names is not None else [f"codebook {k}" for k in range(num_codebooks)]
    if len(names) != num_codebooks:
        raise ValueError(f"got {len(names)} codebook names for {num_codebooks} codebooks")
    steps = timeline.num_steps(frames, num_codebooks)
    table = np.full((num_codebooks, steps), -1, dtype=np.int64)
    for k in range(num_codebooks):
        for s in range(steps):
            f = timeline.frame_of_step(s, k, num_codebooks)
            if 0 <= f < frames:
                table[k, s] = f
    return pd.DataFrame(table, index=names, columns=pd.RangeIndex(steps, name="step"))


def hook_shapes(scale: str, batch: int = 1, steps: int = 1) -> pd.DataFrame:
    """Shape of every hook of a MusicGen architecture (``mstools.models.ARCHITECTURES``), not built.

    Building ``build_musicgen("small")`` takes seconds and ~1.7 GB; the shapes follow from the
    architecture alone: ``[B, S, D]``, ``[B, S, H, D/H]`` for ``attn.hook_z``, ``[B, K, S, card]`` for
    ``hook_logits``.

    Args:
        scale: ``"tiny"``, ``"small"``, ``"medium"`` or ``"large"``.
        batch, steps: B and S to fill in (S = 1 at every generation step; under CFG the batch is 2B).

    Returns:
        DataFrame with ``name, layer, shape`` (one row per hook name, layers expanded).

    >>> hook_shapes("small").set_index("name").loc["blocks.23.attn.hook_z", "shape"]
    (1, 1, 16, 64)
    """
    from .hook_registry import expand_names, spec_for
    from .models import ARCHITECTURES

    if scale not in ARCHITECTURES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(ARCHITECTURES)}")
    a = ARCHITECTURES[scale]
    d, h, card, k = a["dim"], a["num_heads"], a["card"], 4
    rows = []
    for name in expand_names(a["num_layers"]):
        _, layer = spec_for(name)
        if name.endswith("attn.hook_z"):
            shape = (batch, steps, h, d // h)
        elif name == "hook_logits":
            shape = (batch, k, steps, card)
        else:
            shape = (batch, steps, d)
        rows.append(dict(name=name, layer=-1 if layer is None else layer, shape=shape))
    return pd.DataFrame(rows)


def held_out_predictions(features: torch.Tensor, labels: pd.DataFrame, target: str, method: str = "logistic", *,
                         seed: int = 0, test_size: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted labels of the held-out clips of one split (e.g. for a confusion matrix).

    The split is the one :func:`mstools.probes.probe_sweep` uses for the same ``seed`` and
    ``test_size`` (by clip, stratified by class), and the probe is fitted the same way
    (:func:`mstools.probes.fit_probes` on the training rows), so the accuracy of these predictions is
    the sweep's accuracy for that seed.

    Args:
        features: ``[N, D]`` pooled activations of one hook (rows in the order of ``labels``).
        labels: DataFrame with a ``clip`` column and the ``target`` column.
        target: a categorical label column, e.g. ``"genre"``.
        method: ``"logistic"``, ``"ridge"`` or ``"seed"``.

    Returns:
        ``(y_true, y_pred)``, two string arrays ``[N_test]``.

    >>> X = torch.cat([torch.zeros(20, 2), torch.ones(20, 2)]); lab = pd.DataFrame({"clip": range(40), "g": ["a"] * 20 + ["b"] * 20})
    >>> yt, yp = held_out_predictions(X, lab, "g", "ridge"); bool((yt == yp).all())
    True
    """
    from .probes import fit_probes, group_split

    X = features.reshape(features.shape[0], -1)
    if X.shape[0] != len(labels):
        raise ValueError(f"features has {X.shape[0]} rows, labels {len(labels)}")
    col = labels[target]
    rows = np.flatnonzero(col.notna().to_numpy())
    y = col.iloc[rows].astype(str).to_numpy()
    groups = labels["clip"].to_numpy()[rows]
    tr, te = group_split(groups, y, test_size, seed)
    train = labels.iloc[rows[tr]].reset_index(drop=True)
    probe = fit_probes({"x": X[rows[tr]]}, train, target, method)["x"]
    y_pred = probe.predict(X[rows[te]].float())
    return y[te].astype(object), np.asarray(y_pred, dtype=object)


def label_shares(df: pd.DataFrame, factor: str, by: Sequence[str] = ("trial", "control")) -> pd.DataFrame:
    """Share of clips whose ``factor`` was read as each label, per group (rows sum to 1).

    Where :func:`mstools.evaluate.summarize` says how often steering hit its target, this says where
    the other clips went (e.g. to the target genre's partner, or to ``"none"``: grammar broken), and
    gives the unsteered base rate of every label.

    Args:
        df: the table of :func:`mstools.evaluate.steering` (or any table with ``factor`` and ``by``).
        factor: column of read labels, e.g. ``"genre"``.
        by: grouping columns.

    Returns:
        DataFrame indexed by ``by``, one column per label.

    >>> t = pd.DataFrame({"trial": ["a", "a", "a", "b"], "genre": ["jazz", "jazz", "rock", "none"]})
    >>> label_shares(t, "genre", by=["trial"]).round(2).values.tolist()
    [[0.67, 0.0, 0.33], [0.0, 1.0, 0.0]]
    """
    by = list(by)
    missing = [c for c in by + [factor] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table (columns: {list(df.columns)})")
    counts = df.groupby(by + [factor], sort=False, dropna=False).size().unstack(factor, fill_value=0)
    counts = counts[sorted(counts.columns, key=str)]
    return counts.div(counts.sum(axis=1), axis=0)


def compare(df: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per steering trial: its success beside the success of every control, judged against
    the trial's own target.

    :func:`mstools.evaluate.steering` leaves ``success`` empty for the unsteered clips (they have no
    target). Here the unsteered clips are judged against each trial's target, which gives the base
    rate the trial must beat (e.g. how often the unsteered model plays jazz anyway).

    Args:
        df: the table of :func:`mstools.evaluate.steering` (columns ``trial, control, success,
            loglik`` and ``target_<factor>`` / ``<factor>`` per factor).
        by: extra grouping columns, e.g. ``("segment",)`` when clips were scored per segment.

    Returns:
        DataFrame indexed by ``trial`` (and ``by``), trials in order of appearance, with ``n``,
        ``success`` (95 % Wilson ``success_lo``/``success_hi``), ``random``, ``unsteered``,
        ``prompted`` (success rates of the controls; NaN when a control is absent), ``moved``
        (``success - unsteered``) and ``loglik`` of the trial and of each control
        (``loglik_random`` ...).

    >>> t = pd.DataFrame({"trial": ["unsteered", "x", "x", "x"], "control": ["unsteered", "none", "random", "prompted"],
    ...                   "target_genre": [None, "jazz", "jazz", "jazz"], "genre": ["jazz", "jazz", "rock", "jazz"],
    ...                   "success": [None, True, False, True], "loglik": [-1.0, -2.0, -1.5, -1.2]})
    >>> compare(t)[["success", "random", "unsteered", "prompted", "moved"]].values.tolist()
    [[1.0, 0.0, 1.0, 1.0, 0.0]]
    """
    from .evaluate import wilson

    by = list(by)
    targets = [c[len("target_"):] for c in df.columns if c.startswith("target_")]
    if not targets:
        raise KeyError("no target_<factor> columns: pass the table of mstools.evaluate.steering")
    plain = df[df["control"] == "unsteered"]
    rows = []
    steered = df[df["control"] == "none"]
    for key, g in steered.groupby(["trial"] + by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(["trial"] + by, key))
        want = {f: g[f"target_{f}"].iloc[0] for f in targets if pd.notna(g[f"target_{f}"].iloc[0])}
        s = g["success"].dropna().astype(bool)
        row["n"] = len(s)
        row["success"] = float(s.mean()) if len(s) else math.nan
        row["success_lo"], row["success_hi"] = wilson(int(s.sum()), len(s))
        mine = df[df["trial"] == key[0]]
        for extra, value in zip(by, key[1:]):
            mine = mine[mine[extra] == value]
        for control in ("random", "prompted"):
            c = mine[mine["control"] == control]
            row[control] = float(c["success"].dropna().astype(bool).mean()) if len(c) else math.nan
            row[f"loglik_{control}"] = float(c["loglik"].mean()) if len(c) else math.nan
        base = plain
        for extra, value in zip(by, key[1:]):
            base = base[base[extra] == value]
        if len(base) and want:
            hit = np.ones(len(base), dtype=bool)
            for f, v in want.items():
                hit &= (base[f] == v).to_numpy()
            row["unsteered"] = float(hit.mean())
        else:
            row["unsteered"] = math.nan
        row["loglik_unsteered"] = float(base["loglik"].mean()) if len(base) else math.nan
        row["moved"] = row["success"] - row["unsteered"]
        row["loglik"] = float(g["loglik"].mean())
        rows.append(row)
    cols = ["n", "success", "success_lo", "success_hi", "random", "unsteered", "prompted", "moved", "loglik",
            "loglik_random", "loglik_unsteered", "loglik_prompted"]
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=["trial"] + by + cols).set_index(["trial"] + by)
    return out.set_index(["trial"] + by)[cols]


def compare_figure(table: pd.DataFrame, title: str = "", x: str | None = None):
    """Grouped bars of a :func:`compare` table: the trial's success (with its 95 % interval) beside
    the random, unsteered and prompted controls.

    Args:
        table: the output of :func:`compare`.
        title: figure title.
        x: a column to put on the x axis instead of the index (e.g. ``"strength"``).

    Returns:
        A plotly Figure with one bar trace per present column (``steered``, ``random``,
        ``unsteered``, ``prompted``); bars follow the table's row order.
    """
    import plotly.graph_objects as go

    t = table.reset_index()
    keys = [c for c in t.columns if c not in table.columns]
    labels = t[x].astype(str) if x is not None else t[keys].astype(str).agg(" · ".join, axis=1)
    fig = go.Figure()
    err = dict(type="data", symmetric=False, array=(t["success_hi"] - t["success"]).to_numpy(),
               arrayminus=(t["success"] - t["success_lo"]).to_numpy())
    fig.add_trace(go.Bar(x=labels, y=t["success"], name="steered", error_y=err))
    for col in ("random", "unsteered", "prompted"):
        if col in t and t[col].notna().any():
            fig.add_trace(go.Bar(x=labels, y=t[col], name=col))
    fig.update_layout(barmode="group", title=title, yaxis_title="success (share of clips on target)",
                      yaxis_range=[0, 1.05], template="plotly_white")
    return fig


class _ProbeReadout:
    """Callable ``features [N, D] -> probabilities [N, C]`` with the probe's class names as ``classes``."""

    def __init__(self, probe: Any):
        if getattr(probe, "classes", None) is None:
            raise ValueError("probe_readout needs a classification probe (with classes); for a "
                             "continuous probe use its direction: mstools.directions.from_probe(probe)")
        self.probe = probe
        self.classes = list(probe.classes)
        self.hook = probe.hook

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        return torch.softmax(self.probe.scores(features).double(), dim=-1).numpy()

    def __repr__(self) -> str:
        return f"probe_readout({self.probe.method} probe of {self.probe.target!r} at {self.hook})"


def probe_readout(probe: Any) -> _ProbeReadout:
    """Turn a fitted classification probe into a readout for :func:`mstools.readout.per_second`
    and :class:`mstools.widgets.SteeringPanel`: softmax of its scores, one column per class.

    Args:
        probe: a :class:`mstools.probes.Probe` with ``classes`` (e.g. from ``fit_probes``).

    Returns:
        A callable ``features [N, D] -> array [N, C]`` with attributes ``classes`` and ``hook``.

    >>> from mstools.probes import Probe
    >>> r = probe_readout(Probe("h", "genre", "logistic", torch.eye(2), torch.zeros(2), ["jazz", "rock"]))
    >>> r.classes, r(torch.tensor([[0.0, 0.0]])).tolist()
    (['jazz', 'rock'], [[0.5, 0.5]])
    """
    return _ProbeReadout(probe)


def first_difference(codes_a: torch.Tensor, codes_b: torch.Tensor, frame_rate: float) -> torch.Tensor:
    """Time (s) of the first frame where two clips differ in any codebook, per clip (inf: identical).

    Args:
        codes_a, codes_b: LongTensor ``[B, K, T]`` (same shape).
        frame_rate: frames per second.

    Returns:
        float64 tensor ``[B]``: ``frame / frame_rate`` of the first differing frame.

    >>> a = torch.zeros(2, 4, 10, dtype=torch.long); b = a.clone(); b[1, 2, 7] = 5
    >>> first_difference(a, b, 10.0).tolist()
    [inf, 0.7]
    """
    if codes_a.shape != codes_b.shape or codes_a.dim() != 3:
        raise ValueError(f"need two [B, K, T] tensors of one shape, got {tuple(codes_a.shape)} and {tuple(codes_b.shape)}")
    differs = (codes_a != codes_b).any(dim=1)  # [B, T]
    T = differs.shape[1]
    first = torch.where(differs, torch.arange(T), torch.full((T,), T)).min(dim=1).values
    out = first.double() / float(frame_rate)
    return torch.where(first < T, out, torch.full_like(out, math.inf))


def time_generation(model: Any, seconds: float = 1.0, batch: int = 1, *, repeats: int = 1,
                    prompt: str = "music") -> dict[str, float]:
    """Measure generation speed of ``model`` on this machine (codes only, no audio decoding).

    Runs ``repeats`` generations of ``batch`` clips x ``seconds`` and keeps the fastest.

    Returns:
        ``{"steps", "seconds_per_step", "compute_per_audio_second", "batch"}``: LM steps per clip,
        wall time per step, and wall seconds per second of audio (for the whole batch).

    >>> time_generation(model, seconds=1.0)["steps"]        # doctest: +SKIP
    13
    """
    if not (seconds > 0 and batch >= 1 and repeats >= 1):
        raise ValueError(f"need seconds > 0, batch >= 1, repeats >= 1; got {seconds}, {batch}, {repeats}")
    best = math.inf
    steps = 0
    for r in range(repeats):
        t0 = time.perf_counter()
        out = model.generate([prompt] * batch, seconds, seed=r, decode=False)
        best = min(best, time.perf_counter() - t0)
        steps = timeline.num_steps(int(out.codes.shape[-1]), model.num_codebooks)
    return {"steps": float(steps), "seconds_per_step": best / max(steps, 1),
            "compute_per_audio_second": best / seconds, "batch": float(batch)}


def text_conditioner(model: Any) -> str:
    """Name what turns a prompt into the condition the LM cross-attends to, on either backend.

    audiocraft: the classes of ``model.lm.condition_provider.conditioners``; transformers: the text
    encoder feeding ``encoder_hidden_states`` (T5 for released checkpoints; for the testbed, its own
    audiocraft conditioner around a tiny T5 encoder, read by transformers' decoder).

    Returns:
        One line, e.g. ``"description: T5TextConditioner (audiocraft)"``.

    >>> text_conditioner(mstools.load_musicgen("testbed", backend="transformers"))   # doctest: +SKIP
    'description: T5TextConditioner (audiocraft conditioner -> transformers encoder_hidden_states)'
    """
    backend = model.backend
    if backend.name == "audiocraft":
        conds = model.lm.condition_provider.conditioners
        return ", ".join(f"{k}: {type(c).__name__}" for k, c in conds.items()) + " (audiocraft)"
    text = backend.text
    provider = getattr(text, "provider", None)
    if provider is not None:
        conds = ", ".join(f"{k}: {type(c).__name__}" for k, c in provider.conditioners.items())
        return f"{conds} (audiocraft conditioner -> transformers encoder_hidden_states)"
    encoder = getattr(text, "text_encoder", None)
    if encoder is not None:
        proj = " + enc_to_dec_proj" if getattr(text, "proj", None) is not None else ""
        return f"{type(encoder).__name__}{proj} (transformers encoder_hidden_states)"
    return type(text).__name__


def backend_gap(model_a: Any, model_b: Any, codes: torch.Tensor, prompts: Sequence[str | None],
                names_filter: Any = None) -> pd.DataFrame:
    """Teacher-force the same codes and prompts through two models and compare every hook.

    Made for one model on two backends (``load_musicgen(name, backend=...)``): the hook names are
    the same, so every activation and the logits can be compared directly.

    Args:
        model_a, model_b: two :class:`mstools.hooked.HookedMusicGen` with the same hook names.
        codes: LongTensor ``[B, K, T]``.
        prompts: one text per clip (None: unconditional).
        names_filter: hooks to compare (default: all).

    Returns:
        DataFrame indexed by hook name (``"logits"`` first) with ``shape``, ``max_abs_diff``
        (largest ``|a - b|``) and ``scale`` (largest ``|a|``).

    >>> a, b = (mstools.load_musicgen("testbed", backend=x) for x in ("audiocraft", "transformers"))
    >>> codes, prompts = a.reference_codes(2, 2.0)
    >>> backend_gap(a, b, codes, prompts).loc["logits", "max_abs_diff"] < 1e-4   # doctest: +SKIP
    True
    """
    if model_a.hook_names != model_b.hook_names:
        raise ValueError("the two models have different hook names; compare one model on two "
                         "backends (or two models of one architecture)")
    la, ca = model_a.run_with_cache(codes, prompts, names_filter=names_filter)
    lb, cb = model_b.run_with_cache(codes, prompts, names_filter=names_filter)
    pairs = [("logits", la, lb)] + [(n, ca[n], cb[n]) for n in ca]
    rows = []
    for name, x, y in pairs:
        if x.shape != y.shape:
            raise ValueError(f"{name}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        rows.append(dict(hook=name, shape=tuple(x.shape),
                         max_abs_diff=float((x.double() - y.double()).abs().max()),
                         scale=float(x.double().abs().max())))
    return pd.DataFrame(rows).set_index("hook")


def untrained_testbed(seed: int = 0, backend: str = "audiocraft") -> Any:
    """The testbed's architecture with random weights (the untrained-model baseline), on ``backend``.

    On ``"transformers"`` the random audiocraft LM's weights are mapped into transformers' decoder,
    exactly as :func:`mstools.load_musicgen` does for the trained testbed, so both backends hold the
    same untrained model (same fingerprint).

    Returns:
        :class:`mstools.hooked.HookedMusicGen` named ``"testbed-untrained"``.

    >>> untrained_testbed(0, "transformers").backend_name
    'transformers'
    """
    from .hooked import HookedMusicGen
    from .models import _check_backend
    from .testbed import build_testbed_musicgen
    source: Any = build_testbed_musicgen(seed=seed)
    if _check_backend(backend) == "transformers":
        from .backends.transformers_backend import backend_from_audiocraft
        source = backend_from_audiocraft(source)
    return HookedMusicGen(source, name="testbed-untrained")
