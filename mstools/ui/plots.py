"""Plotly figures for probes and directions. Every function returns a ``plotly.graph_objects.Figure``.

>>> import pandas as pd
>>> df = pd.DataFrame({"model": "trained", "hook": [f"blocks.{l}.hook_resid_post" for l in (0, 1)] * 2,
...                    "layer": [0, 1] * 2, "target": "genre", "method": "ridge", "control": "none",
...                    "seed": [0, 0, 1, 1], "accuracy": [0.5, 0.9, 0.6, 0.95]})
>>> [t.name for t in layer_curve(df).data]
['trained · ridge · genre', 'trained · ridge · genre (95% interval)']
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from mstools.analysis.probes import summarize
from mstools.core.names import kind_of

if TYPE_CHECKING:
    import torch

__all__ = ["layer_curve", "confusion_matrix", "similarity_heatmap", "projection_scatter", "steering_curve",
           "steering_bars", "patching_heatmap"]

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22"]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


#: Metrics with a bounded range: interval bands are clipped to it.
_BOUNDED = {"accuracy": (0.0, 1.0), "f1_macro": (0.0, 1.0), "r2": (-np.inf, 1.0)}


def layer_curve(
    df: pd.DataFrame,
    metric: str = "accuracy",
    *,
    target: str | None = None,
    method: str | None = None,
    confidence: float = 0.95,
    title: str | None = None,
) -> go.Figure:
    """Metric per layer: mean over seeds with a ``confidence`` interval band, one line per setting.

    ``df``: the table of :func:`mstools.analysis.probes.probe_sweep` (summarised here) or of
    :func:`mstools.analysis.probes.summarize`. Colour = (method, target, hook kind); line style = model and
    control: the first model (``"trained"`` if present) solid, other models (e.g. ``"untrained"``)
    dashed, the shuffled-label control dotted. Each line has a translucent band trace named
    ``"... (95% interval)"`` (skipped where the interval is undefined, e.g. a single seed). Hooks
    without a layer (``layer == -1``, e.g. ``hook_embed``) sit at x = -1.
    """

    if df.empty:
        raise ValueError("layer_curve: the table is empty")
    if target is not None:
        df = df[df["target"] == target]
    if method is not None:
        df = df[df["method"] == method]
    if df.empty:
        raise ValueError(f"layer_curve: no rows for target={target!r}, method={method!r}")
    s = df if f"{metric}_mean" in df.columns else summarize(df, [metric], confidence)
    if f"{metric}_mean" not in s.columns:
        raise KeyError(f"metric {metric!r} not in the table (columns: {list(df.columns)})")
    s = s.copy()
    for col, default in (("model", "trained"), ("control", "none"), ("method", ""), ("target", "")):
        if col not in s.columns:
            s[col] = default
    s["kind"] = s["hook"].map(kind_of) if "hook" in s.columns else ""
    models = list(dict.fromkeys(s["model"]))
    first = "trained" if "trained" in models else models[0]
    multi_kind = s["kind"].nunique() > 1
    color_keys = list(dict.fromkeys(zip(s["method"], s["target"], s["kind"])))
    pct = int(round(confidence * 100))
    fig = go.Figure()
    keys = ["model", "control", "method", "target", "kind"]
    for (model, control, meth, tgt, kind), g in s.groupby(keys, sort=False):
        g = g.sort_values("layer")
        color = _COLORS[color_keys.index((meth, tgt, kind)) % len(_COLORS)]
        dash = "dot" if control != "none" else ("solid" if model == first else "dash")
        name = " · ".join(str(x) for x in (model, meth, tgt) if x != "")
        name += f" ({kind})" if multi_kind else ""
        name += f" · {control}" if control != "none" else ""
        x = g["layer"].to_numpy()
        fig.add_trace(go.Scatter(x=x, y=g[f"{metric}_mean"], mode="lines+markers", name=name,
                                 line=dict(color=color, dash=dash), legendgroup=name))
        lo, hi = g[f"{metric}_lo"].to_numpy(dtype=float), g[f"{metric}_hi"].to_numpy(dtype=float)
        if metric in _BOUNDED:  # a t-interval over few seeds can leave the metric's range
            lo, hi = np.clip(lo, *_BOUNDED[metric]), np.clip(hi, *_BOUNDED[metric])
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            fig.add_trace(go.Scatter(
                x=np.concatenate([x[ok], x[ok][::-1]]), y=np.concatenate([hi[ok], lo[ok][::-1]]),
                mode="lines", fill="toself", fillcolor=_rgba(color, 0.15), line=dict(width=0),
                hoverinfo="skip",
                name=f"{name} ({pct}% interval)", legendgroup=name, showlegend=False))
    fig.update_layout(title=title or f"{metric} per layer (mean over seeds, {pct}% interval)",
                      xaxis_title="layer", yaxis_title=metric, template="plotly_white")
    return fig


def confusion_matrix(
    y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None, *, normalize: str | None = "true",
    title: str | None = None,
) -> go.Figure:
    """Confusion matrix heatmap: rows = true class, columns = predicted (``labels`` order, default sorted).

    ``normalize="true"``: each row sums to 1 (recall per class); ``None``: counts. The matrix is the
    heatmap's ``z``.
    """
    yt = np.asarray(y_true, dtype=object).astype(str)
    yp = np.asarray(y_pred, dtype=object).astype(str)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} rows, y_pred {len(yp)}")
    labs = [str(x) for x in labels] if labels is not None else sorted(set(yt) | set(yp))
    pos = {c: i for i, c in enumerate(labs)}
    M = np.zeros((len(labs), len(labs)))
    for a, b in zip(yt, yp):
        if a in pos and b in pos:
            M[pos[a], pos[b]] += 1
    if normalize == "true":
        M = M / np.maximum(M.sum(1, keepdims=True), 1)
    elif normalize is not None:
        raise ValueError(f"normalize must be 'true' or None, got {normalize!r}")
    text = [[f"{v:.2f}" if normalize else f"{int(v)}" for v in row] for row in M]
    fig = go.Figure(go.Heatmap(z=M, x=labs, y=labs, colorscale="Blues", text=text, texttemplate="%{text}",
                               zmin=0, zmax=1 if normalize else None, name="confusion"))
    fig.update_layout(title=title or "confusion matrix", xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", template="plotly_white")
    return fig


def similarity_heatmap(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Heatmap of a square similarity table (e.g. :func:`mstools.analysis.directions.cosine_matrix`), scale -1..1."""
    M = df.to_numpy(dtype=float)
    text = [["" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in M]
    fig = go.Figure(go.Heatmap(z=M, x=[str(c) for c in df.columns], y=[str(i) for i in df.index],
                               zmin=-1, zmax=1, colorscale="RdBu", reversescale=True, text=text,
                               texttemplate="%{text}", name="cosine"))
    fig.update_layout(title=title or "cosine similarity", yaxis_autorange="reversed", template="plotly_white")
    return fig


def projection_scatter(
    points_2d: "torch.Tensor | np.ndarray",
    labels: Sequence,
    directions_2d: pd.DataFrame | None = None,
    *,
    title: str | None = None,
) -> go.Figure:
    """Scatter of 2-D points coloured by label, with directions as arrows.

    ``points_2d [N, 2]`` (tensor or array), ``labels [N]``; ``directions_2d``: the table of
    :func:`mstools.analysis.projections.direction_arrows` (``name, x0, y0, x1, y1``). One marker trace per label,
    one line trace per direction (legend entry) and an arrowhead annotation at its end.
    """
    P = np.asarray(points_2d.detach().cpu() if hasattr(points_2d, "detach") else points_2d, dtype=float)
    if P.ndim != 2 or P.shape[1] < 2:
        raise ValueError(f"points_2d must be [N, 2], got shape {P.shape}")
    lab = np.asarray(labels, dtype=object).astype(str)
    if len(lab) != len(P):
        raise ValueError(f"labels has {len(lab)} rows, points_2d {len(P)}")
    fig = go.Figure()
    for i, c in enumerate(sorted(set(lab))):
        m = lab == c
        fig.add_trace(go.Scatter(x=P[m, 0], y=P[m, 1], mode="markers", name=c,
                                 marker=dict(size=5, opacity=0.7, color=_COLORS[i % len(_COLORS)])))
    if directions_2d is not None:
        for _, r in directions_2d.iterrows():
            fig.add_trace(go.Scatter(x=[r.x0, r.x1], y=[r.y0, r.y1], mode="lines", name=f"→ {r['name']}",
                                     line=dict(color="black", width=2)))
            fig.add_annotation(x=r.x1, y=r.y1, ax=r.x0, ay=r.y0, xref="x", yref="y", axref="x", ayref="y",
                               showarrow=True, arrowhead=3, arrowsize=1.5, arrowwidth=2, arrowcolor="black",
                               text="")
    fig.update_layout(title=title or "projection", template="plotly_white", xaxis_title="dim 1",
                      yaxis_title="dim 2")
    return fig


def steering_curve(summary: pd.DataFrame, *, x: str = "strength", success: str = "success",
                   quality: str = "loglik", by: str = "method", title: str | None = None) -> go.Figure:
    """Steering success vs strength (left axis, one line per ``by`` group, dashed = random control)
    with quality (e.g. grammar ``loglik``) on a second axis (dotted).

    ``summary``: rows with columns ``x``, ``success``, ``quality``, ``by`` and optionally ``control``
    (``"none"`` / ``"random"``), e.g. :func:`mstools.evaluation.summarize` output with a strength column.
    """
    from plotly.subplots import make_subplots  # lazy: display libraries load when something is drawn
    need = {x, success, quality, by}
    missing = need - set(summary.columns)
    if missing:
        raise KeyError(f"steering_curve needs columns {sorted(missing)}; have {list(summary.columns)}")
    s = summary.copy()
    if "control" not in s.columns:
        s["control"] = "none"
    s[x] = s[x].astype(float)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, (name, g) in enumerate(s.groupby(by, sort=False)):
        color = _COLORS[i % len(_COLORS)]
        for control, gc in g.groupby("control", sort=False):
            gc = gc.groupby(x, as_index=False)[[success, quality]].mean().sort_values(x)
            dash = "solid" if control == "none" else "dash"
            label = f"{name}" + ("" if control == "none" else f" · {control}")
            fig.add_trace(go.Scatter(x=gc[x], y=gc[success], mode="lines+markers", name=label,
                                     line=dict(color=color, dash=dash)), secondary_y=False)
            if control == "none":
                fig.add_trace(go.Scatter(x=gc[x], y=gc[quality], mode="lines+markers",
                                         name=f"{name} · {quality}", line=dict(color=color, dash="dot"),
                                         marker=dict(symbol="x")), secondary_y=True)
    fig.update_yaxes(title_text=success, range=[-0.02, 1.02], secondary_y=False)
    fig.update_yaxes(title_text=f"{quality} (dotted)", secondary_y=True)
    fig.update_layout(title=title or f"{success} and {quality} vs {x}", xaxis_title=x,
                      template="plotly_white")
    return fig


def steering_bars(summary: pd.DataFrame, *, title: str = "", x: str | None = None) -> go.Figure:
    """Grouped bars of a :func:`mstools.evaluation.summarize` table: each trial's success (95 %
    interval) beside its base rate (paired unsteered clips), the random control (mean, error bar from
    the lowest to the highest draw) and the prompted control.

    Args:
        summary: the instrument's summary (one row per trial).
        title: figure title.
        x: a column for the x axis (default: trial, with the segment when there are several).

    >>> s = pd.DataFrame({"trial": ["a"], "success": [0.8], "success_lo": [0.6], "success_hi": [0.9],
    ...                   "base_rate": [0.3], "random_mean": [0.3], "random_min": [0.2],
    ...                   "random_max": [0.4], "prompted": [1.0]})
    >>> [t.name for t in steering_bars(s).data]
    ['steered', 'unsteered (base rate)', 'random directions', 'prompted']
    """
    t = summary.reset_index(drop=True)
    if x is not None:
        labels = t[x].astype(str)
    elif "segment" in t and t["segment"].nunique() > 1:
        labels = t["trial"].astype(str) + " · seg " + t["segment"].astype(str)
    else:
        labels = t["trial"].astype(str)
    fig = go.Figure()
    err = dict(type="data", symmetric=False, array=(t["success_hi"] - t["success"]).to_numpy(),
               arrayminus=(t["success"] - t["success_lo"]).to_numpy())
    fig.add_trace(go.Bar(x=labels, y=t["success"], name="steered", error_y=err, marker_color="#1f77b4"))
    fig.add_trace(go.Bar(x=labels, y=t["base_rate"], name="unsteered (base rate)", marker_color="#7f7f7f"))
    if "random_mean" in t and t["random_mean"].notna().any():
        rerr = dict(type="data", symmetric=False, array=(t["random_max"] - t["random_mean"]).to_numpy(),
                    arrayminus=(t["random_mean"] - t["random_min"]).to_numpy())
        fig.add_trace(go.Bar(x=labels, y=t["random_mean"], name="random directions", error_y=rerr,
                             marker_color="#ff7f0e"))
    if "prompted" in t and t["prompted"].notna().any():
        fig.add_trace(go.Bar(x=labels, y=t["prompted"], name="prompted", marker_color="#2ca02c"))
    fig.update_layout(barmode="group", title=title, yaxis_title="share of clips on target",
                      yaxis_range=[0, 1.05], template="plotly_white")
    return fig


def patching_heatmap(df: pd.DataFrame, *, x: str = "t0", y: str = "layer", value: str = "metric",
            title: str | None = None) -> Any:
    """A plotly heatmap of ``value`` over ``y`` (rows) x ``x`` (columns), e.g. layer x time or
    layer x head, from :mod:`mstools.analysis.patching`; several rows per cell (e.g. hooks) are averaged.

    >>> patching_heatmap(patch_sweep(...), x="head", y="layer")                           # doctest: +SKIP
    """
    for col in (x, y, value):
        if col not in df.columns:
            raise KeyError(f"column {col!r} not in the table (columns: {list(df.columns)})")
    grid = df.pivot_table(index=y, columns=x, values=value, aggfunc="mean").sort_index()
    labels = {"t0": "window start (s)", "layer": "layer", "head": "head", "metric": "patched effect"}
    fig = px.imshow(grid, aspect="auto", origin="lower", color_continuous_scale="RdBu_r",
                    color_continuous_midpoint=0.0,
                    labels=dict(x=labels.get(x, x), y=labels.get(y, y), color=labels.get(value, value)),
                    title=title or f"{value}: {y} x {x} (0 = corrupted, 1 = clean)")
    fig.update_layout(template="plotly_white")
    return fig
