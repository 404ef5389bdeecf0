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
           "steering_bars", "patching_heatmap", "label_share_bars", "per_layer", "label_color", "metric_label", "nice_ticks", "GENRE_COLORS",
           "SERIES_STYLE"]

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22"]

#: One colour per genre in every figure of the package (``"none"``: no label fits the grammar).
GENRE_COLORS = {"rock": "#d62728", "jazz": "#1f77b4", "classical": "#2ca02c", "electronic": "#9467bd",
                "none": "#7f7f7f"}
#: Colours for labels that are not genres, taken in order of first use by :func:`label_color`.
_OTHER_COLORS = ["#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#393b79", "#637939", "#8c6d31",
                 "#843c39", "#7b4173"]

#: Colour and dash of each (model, control) in layer curves: every combination differs in both.
SERIES_STYLE = {("trained", "none"): ("#1f77b4", "solid"), ("untrained", "none"): ("#ff7f0e", "dash"),
                ("trained", "shuffled"): ("#7f7f7f", "dot"), ("untrained", "shuffled"): ("#bcbd22", "dashdot")}
_EXTRA_DASHES = ["longdash", "longdashdot", "5px,3px,1px,3px"]

#: Axis labels of probe metrics.
_METRIC_LABELS = {"accuracy": "accuracy", "r2": "R²", "f1_macro": "macro F1", "balanced_accuracy":
                  "balanced accuracy", "auroc": "AUROC"}


def metric_label(metric: str) -> str:
    """How a metric is written on an axis: ``metric_label("r2") == "R²"``."""
    return _METRIC_LABELS.get(metric, metric.replace("_", " "))


def label_color(label: Any, others: Sequence[Any] = ()) -> str:
    """The colour of a label: the fixed genre map first (:data:`GENRE_COLORS`), else a palette entry
    chosen by the label's place in ``others`` (e.g. every label of the figure, sorted), so one figure
    never gives two labels one colour.

    >>> label_color("jazz") == GENRE_COLORS["jazz"], label_color("fast", ["fast", "slow"]) != label_color("slow", ["fast", "slow"])
    (True, True)
    """
    key = str(label).removeprefix("genre=")
    if key in GENRE_COLORS:
        return GENRE_COLORS[key]
    rest = [str(o) for o in others if str(o).removeprefix("genre=") not in GENRE_COLORS]
    i = rest.index(str(label)) if str(label) in rest else sum(map(ord, str(label)))
    return _OTHER_COLORS[i % len(_OTHER_COLORS)]


def nice_ticks(values: Sequence[float], n: int = 5) -> tuple[list[float], float]:
    """A padded axis range and a round tick step (1, 2 or 5 times a power of ten) for ``values``:
    ``([lo, hi], dtick)`` with ``lo`` and ``hi`` multiples of ``dtick``, so tick labels are short
    round numbers (0.5, 1, 1.5 ...), never values like -0.45 or -2.13.

    >>> nice_ticks([-2.13, -0.45])
    ([-2.5, 0.0], 0.5)
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return [0.0, 1.0], 0.2
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** np.floor(np.log10(raw))
    step = float(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw - 1e-12))
    lo_t, hi_t = np.floor(lo / step + 1e-9) * step, np.ceil(hi / step - 1e-9) * step
    return [float(round(lo_t, 10)) + 0.0, float(round(hi_t, 10)) + 0.0], step


def _integer_axis(fig: go.Figure, values: Sequence[float], axis: str = "xaxis") -> None:
    """Ticks at every integer of ``values`` (layers, heads): never 0.5 or 2.5."""
    v = sorted({int(x) for x in values if x is not None and np.isfinite(x)})
    if v:
        fig.update_layout({axis: dict(tickmode="array", tickvals=v, ticktext=[str(x) for x in v])})


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


#: Metrics with a bounded range: interval bands are clipped to it.
_BOUNDED = {"accuracy": (0.0, 1.0), "f1_macro": (0.0, 1.0), "r2": (-np.inf, 1.0)}
_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"]


def _series_style(model: str, control: str, order: list[tuple[str, str]]) -> tuple[str, str]:
    if (model, control) in SERIES_STYLE:
        return SERIES_STYLE[(model, control)]
    i = order.index((model, control))
    return _OTHER_COLORS[i % len(_OTHER_COLORS)], _EXTRA_DASHES[i % len(_EXTRA_DASHES)]


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
    :func:`mstools.analysis.probes.summarize`. Model and control (trained / untrained / shuffled
    labels) differ in colour **and** dash (:data:`SERIES_STYLE`: trained solid blue, untrained dashed
    orange, shuffled dotted grey); when several methods, targets or hook kinds are drawn, each of
    those has its own marker symbol (and its own colour when only one model and control is drawn).
    Each line has a translucent band trace named ``"... (95% interval)"`` (skipped where the interval
    is undefined, e.g. a single seed). Hooks without a layer (``layer == -1``, e.g. ``hook_embed``)
    sit at x = -1. Layer ticks are integers; the y axis is labelled with :func:`metric_label`.
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
    multi_kind = s["kind"].nunique() > 1
    series = list(dict.fromkeys(zip(s["method"], s["target"], s["kind"])))
    pairs = list(dict.fromkeys(zip(s["model"], s["control"])))
    pct = int(round(confidence * 100))
    label = metric_label(metric)
    fig = go.Figure()
    keys = ["model", "control", "method", "target", "kind"]
    for (model, control, meth, tgt, kind), g in s.groupby(keys, sort=False):
        g = g.sort_values("layer")
        color, dash = _series_style(model, control, pairs)
        k = series.index((meth, tgt, kind))
        if len(pairs) == 1 and len(series) > 1:
            color = _COLORS[k % len(_COLORS)]
        symbol = _SYMBOLS[k % len(_SYMBOLS)]
        name = " · ".join(str(x) for x in (model, meth, tgt) if x != "")
        name += f" ({kind})" if multi_kind else ""
        name += f" · {control}" if control != "none" else ""
        x = g["layer"].to_numpy()
        fig.add_trace(go.Scatter(x=x, y=g[f"{metric}_mean"], mode="lines+markers", name=name,
                                 line=dict(color=color, dash=dash, width=2.5),
                                 marker=dict(symbol=symbol, size=8, color=color), legendgroup=name))
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
    fig.update_layout(title=title or f"{label} per layer (mean over seeds, {pct}% interval)",
                      xaxis_title="layer", yaxis_title=label, template="plotly_white",
                      legend=dict(title="model · method · target"))
    _integer_axis(fig, s["layer"])
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
    axis_titles: tuple[str, str] = ("dim 1", "dim 2"),
    legend_title: str = "",
) -> go.Figure:
    """Scatter of 2-D points coloured by label, with directions as labelled arrows.

    ``points_2d [N, 2]`` (tensor or array), ``labels [N]``; ``directions_2d``: the table of
    :func:`mstools.analysis.projections.direction_arrows` (``name, x0, y0, x1, y1``). One marker trace
    per label (genres in their fixed colours, :func:`label_color`); one line trace per direction
    with its own colour and legend entry ``"→ name"`` (the colour of the label it points to when
    that label is a class of the scatter or a genre, else a colour no other arrow has), and an
    arrowhead annotation at its end whose text is the direction's name.
    """
    P = np.asarray(points_2d.detach().cpu() if hasattr(points_2d, "detach") else points_2d, dtype=float)
    if P.ndim != 2 or P.shape[1] < 2:
        raise ValueError(f"points_2d must be [N, 2], got shape {P.shape}")
    lab = np.asarray(labels, dtype=object).astype(str)
    if len(lab) != len(P):
        raise ValueError(f"labels has {len(lab)} rows, points_2d {len(P)}")
    classes = sorted(set(lab))
    fig = go.Figure()
    for c in classes:
        m = lab == c
        fig.add_trace(go.Scatter(x=P[m, 0], y=P[m, 1], mode="markers", name=c, legendgroup="points",
                                 marker=dict(size=5, opacity=0.6, color=label_color(c, classes))))
    if directions_2d is not None and len(directions_2d):
        names = [str(n) for n in directions_2d["name"]]
        used: set[str] = set()
        for i, (_, r) in enumerate(directions_2d.iterrows()):
            name = str(r["name"])
            short = name.split(":")[-1].removeprefix("genre=")
            if short in classes or short in GENRE_COLORS:
                color = label_color(short, classes)
            else:
                color = label_color(name, names)
            if color in used:  # two arrows never share a colour
                color = next((c for c in _COLORS + _OTHER_COLORS if c not in used), color)
            used.add(color)
            fig.add_trace(go.Scatter(x=[r.x0, r.x1], y=[r.y0, r.y1], mode="lines", name=f"→ {name}",
                                     legendgroup="arrows", line=dict(color=color, width=3)))
            fig.add_annotation(x=r.x1, y=r.y1, ax=r.x0, ay=r.y0, xref="x", yref="y", axref="x", ayref="y",
                               showarrow=True, arrowhead=3, arrowsize=1.3, arrowwidth=3, arrowcolor=color,
                               text=f"<b>{short}</b>", font=dict(color=color, size=13),
                               bgcolor="rgba(255,255,255,0.7)", standoff=2)
    fig.update_layout(title=title or "projection", template="plotly_white", xaxis_title=axis_titles[0],
                      yaxis_title=axis_titles[1], legend=dict(title=legend_title))
    return fig


def steering_curve(summary: pd.DataFrame, *, x: str = "strength", quality: str = "ll_drop",
                   by: str | None = None, title: str | None = None) -> go.Figure:
    """Steering success vs strength (left axis) with its controls, and the damage on a second axis.

    ``summary``: :func:`mstools.evaluation.summarize` rows with an ``x`` column (e.g. the strength of
    each trial). Left axis (share of clips on target, 0..1): ``success`` (solid, 95 % Wilson band),
    the random directions of equal norm (``random_mean``, dashed, band from the lowest to the highest
    draw), the unsteered base rate (dash-dot) and the prompted control (dotted) where present. Right
    axis: ``quality`` (default ``ll_drop``: grammar log-likelihood per frame lost against the paired
    unsteered clips; ``ll_drop_random`` beside it, dashed, x markers) with round tick values
    (:func:`nice_ticks`). ``by``: one group of lines per value of this column (e.g. a method).
    """
    from plotly.subplots import make_subplots  # lazy: display libraries load when something is drawn
    need = {x, "success", quality}
    missing = need - set(summary.columns)
    if missing:
        raise KeyError(f"steering_curve needs columns {sorted(missing)}; have {list(summary.columns)}")
    s = summary.copy()
    s[x] = s[x].astype(float)
    groups = [("", s)] if by is None else list(s.groupby(by, sort=False))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    qvals: list[float] = []
    qlabel = {"ll_drop": "log-likelihood drop per frame", "loglik": "log-likelihood per frame"}.get(quality, quality)
    for i, (name, g) in enumerate(groups):
        g = g.sort_values(x)
        color = _COLORS[i % len(_COLORS)]
        pre = f"{name} · " if name != "" else ""
        xs = g[x].to_numpy()
        if {"success_lo", "success_hi"} <= set(g.columns):
            fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]),
                                     y=np.concatenate([g["success_hi"], g["success_lo"][::-1]]),
                                     fill="toself", fillcolor=_rgba(color, 0.15), line=dict(width=0),
                                     hoverinfo="skip", showlegend=False, name=f"{pre}steered (95% interval)"),
                          secondary_y=False)
        fig.add_trace(go.Scatter(x=xs, y=g["success"], mode="lines+markers", name=f"{pre}steered",
                                 line=dict(color=color, width=3)), secondary_y=False)
        if "random_mean" in g and g["random_mean"].notna().any():
            if {"random_min", "random_max"} <= set(g.columns):
                fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]),
                                         y=np.concatenate([g["random_max"], g["random_min"][::-1]]),
                                         fill="toself", fillcolor=_rgba("#ff7f0e", 0.12), line=dict(width=0),
                                         hoverinfo="skip", showlegend=False,
                                         name=f"{pre}random directions (lowest-highest draw)"),
                              secondary_y=False)
            fig.add_trace(go.Scatter(x=xs, y=g["random_mean"], mode="lines+markers",
                                     name=f"{pre}random directions (mean)",
                                     line=dict(color="#ff7f0e", dash="dash")), secondary_y=False)
        if "base_rate" in g:
            fig.add_trace(go.Scatter(x=xs, y=g["base_rate"], mode="lines", name=f"{pre}unsteered (base rate)",
                                     line=dict(color="#7f7f7f", dash="dashdot")), secondary_y=False)
        if "prompted" in g and g["prompted"].notna().any():
            fig.add_trace(go.Scatter(x=xs, y=g["prompted"], mode="lines", name=f"{pre}prompted",
                                     line=dict(color="#2ca02c", dash="dot")), secondary_y=False)
        for col, dash, sym in ((quality, "solid", "x"), (f"{quality}_random", "dash", "x-open")):
            if col in g and g[col].notna().any():
                qvals += list(g[col].astype(float))
                what = "steered" if col == quality else "random"
                fig.add_trace(go.Scatter(x=xs, y=g[col], mode="lines+markers", name=f"{pre}{qlabel} ({what})",
                                         line=dict(color="#8c564b", dash=dash, width=1.5),
                                         marker=dict(symbol=sym, size=9)), secondary_y=True)
    fig.update_yaxes(title_text="share of clips on target", range=[-0.02, 1.02], dtick=0.2,
                     tickformat=".1f", secondary_y=False)
    rng, dtick = nice_ticks(qvals)
    fig.update_yaxes(title_text=f"{qlabel} (brown)", range=rng, dtick=dtick, tick0=0.0,
                     tickformat=_tick_format(dtick), showgrid=False, zeroline=False, secondary_y=True)
    fig.update_layout(title=title or f"success and damage vs {x}", xaxis_title=x, template="plotly_white",
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(tickvals=sorted(s[x].unique()))
    return fig


def _tick_format(dtick: float) -> str:
    """Just enough decimals for ticks ``dtick`` apart."""
    decimals = max(0, int(-np.floor(np.log10(dtick) + 1e-9))) if dtick < 1 else 0
    return f".{decimals}f"


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
    for col, axis in ((y, "yaxis"), (x, "xaxis")):
        if col in ("layer", "head"):
            _integer_axis(fig, grid.index if axis == "yaxis" else grid.columns, axis)
    return fig


def per_layer(curves: pd.DataFrame, *, title: str = "", yaxis_title: str = "") -> go.Figure:
    """One line per column of ``curves`` (index: layer), markers on every layer, integer layer ticks,
    each column in its own colour and dash.

    >>> fig = per_layer(pd.DataFrame({"probe": [0.5, 1.0], "steering": [0.1, 0.4]}, index=[0, 1]))
    >>> [t.name for t in fig.data], list(fig.layout.xaxis.tickvals)
    (['probe', 'steering'], [0, 1])
    """
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    fig = go.Figure([go.Scatter(x=list(curves.index), y=curves[c], mode="lines+markers", name=str(c),
                                line=dict(color=_COLORS[i % len(_COLORS)], dash=dashes[i % len(dashes)], width=2.5),
                                marker=dict(symbol=_SYMBOLS[i % len(_SYMBOLS)], size=8))
                     for i, c in enumerate(curves.columns)])
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=yaxis_title, template="plotly_white")
    _integer_axis(fig, curves.index)
    return fig


def label_share_bars(shares: pd.DataFrame, *, title: str = "", facet: str | None = None) -> go.Figure:
    """Stacked bars of :func:`mstools.evaluation.label_shares` (one bar per row, one colour per
    label: genres in their fixed colours).

    Args:
        shares: rows = groups (a (multi-)index, e.g. trial x control), columns = labels, rows sum to 1.
        title: figure title.
        facet: an index level drawn as side-by-side panels (e.g. ``"segment"``).

    >>> t = pd.DataFrame({"jazz": [0.5, 1.0], "rock": [0.5, 0.0]}, index=pd.Index(["a", "b"], name="trial"))
    >>> [tr.name for tr in label_share_bars(t).data]
    ['jazz', 'rock']
    """
    df = shares.reset_index()
    levels = [c for c in (shares.index.names or []) if c is not None] or ["index"]
    labels = [c for c in shares.columns]
    df["bar"] = df[[c for c in levels if c != facet]].astype(str).agg(" · ".join, axis=1)
    long = df.melt(id_vars=["bar"] + ([facet] if facet else []), value_vars=labels, var_name="label",
                   value_name="share")
    order = [str(c) for c in labels]
    fig = px.bar(long, x="bar", y="share", color="label", facet_col=facet, barmode="stack",
                 category_orders={"label": order, "bar": list(dict.fromkeys(df["bar"]))},
                 color_discrete_map={str(c): label_color(c, order) for c in order},
                 title=title, labels={"bar": "", "share": "share of clips", "label": "label read"})
    fig.update_layout(template="plotly_white", yaxis_range=[0, 1.0001])
    return fig
