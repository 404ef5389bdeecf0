"""The package's plotting style: fixed genre colours, labelled arrows, integer layer ticks, model x
control told apart by colour and dash, R² on axes, round ticks on second axes."""
import numpy as np
import pandas as pd
import pytest
import torch

from mstools.analysis.directions import diff_means_all
from mstools.analysis.projections import direction_arrows, pca
from mstools.ui import plots
from mstools.ui.plots import (GENRE_COLORS, label_color, label_share_bars, layer_curve, metric_label,
                              nice_ticks, patching_heatmap, projection_scatter, steering_curve)

GENRES = ["rock", "jazz", "classical", "electronic"]


def _sweep(metric="accuracy"):
    rows = []
    for model in ("trained", "untrained"):
        for control in ("none", "shuffled"):
            for layer in range(4):
                for seed in range(3):
                    rows.append(dict(model=model, hook=f"blocks.{layer}.hook_resid_post", layer=layer,
                                     target="genre", method="logistic", control=control, seed=seed,
                                     accuracy=0.5 + 0.1 * seed, r2=0.1 * layer, f1_macro=0.5))
    return pd.DataFrame(rows)


def _lines(fig):
    return [t for t in fig.data if t.fill is None]


def test_every_genre_has_one_fixed_colour_everywhere():
    assert len(set(GENRE_COLORS[g] for g in GENRES)) == 4
    assert all(label_color(g) == GENRE_COLORS[g] for g in GENRES)
    assert label_color("genre=jazz") == GENRE_COLORS["jazz"]
    # the same genre gets the same colour whatever else is in the figure
    X = torch.randn(40, 6)
    fig_a = projection_scatter(X[:, :2], ["jazz", "rock"] * 20)
    fig_b = projection_scatter(X[:, :2], ["classical", "jazz", "electronic", "rock"] * 10)
    colour = lambda fig, name: next(t.marker.color for t in fig.data if t.name == name)  # noqa: E731
    assert colour(fig_a, "jazz") == colour(fig_b, "jazz") == GENRE_COLORS["jazz"]
    # non-genre labels of one figure never share a colour
    others = ["fast", "slow", "medium", "piano", "brass", "strings", "synth"]
    assert len({label_color(o, others) for o in others}) == len(others)


def test_arrows_have_distinct_colours_labels_and_legend_entries():
    g = torch.Generator().manual_seed(0)
    labels = np.array(GENRES * 30)
    X = torch.randn(120, 8, generator=g) + 3 * torch.nn.functional.one_hot(
        torch.tensor([GENRES.index(x) for x in labels]), 8).float()
    dirs = diff_means_all(X, labels, hook="h", target="genre")
    p = pca(X, 2)
    fig = projection_scatter(p.transform(X), labels, direction_arrows(p, {k: d.vector for k, d in dirs.items()}))
    arrows = [t for t in fig.data if t.mode == "lines"]
    assert len(arrows) == 4
    assert len({t.name for t in arrows}) == 4 and all(t.name.startswith("→ ") for t in arrows)
    assert len({t.line.color for t in arrows}) == 4 and "black" not in {t.line.color for t in arrows}
    # an arrow toward a genre has that genre's colour, and its head is labelled
    for t in arrows:
        assert t.line.color == GENRE_COLORS[t.name[2:]]
    texts = [a.text for a in fig.layout.annotations]
    assert all(t for t in texts) and {t.replace("<b>", "").replace("</b>", "") for t in texts} == set(GENRES)
    # directions whose names are no class still get distinct colours
    fig = projection_scatter(p.transform(X), labels, direction_arrows(p, list(dirs.values())[:1] * 0 + [
        d for d in dirs.values()]))
    assert len({t.line.color for t in fig.data if t.mode == "lines"}) == 4


def test_layer_curve_model_and_control_differ_in_colour_and_dash_with_integer_ticks():
    fig = layer_curve(_sweep(), "accuracy")
    lines = _lines(fig)
    styles = {(t.line.color, t.line.dash) for t in lines}
    assert len(lines) == 4
    assert len({t.line.color for t in lines}) == 4 and len({t.line.dash for t in lines}) == 4
    assert len(styles) == 4
    assert list(fig.layout.xaxis.tickvals) == [0, 1, 2, 3]
    assert all(float(v).is_integer() for v in fig.layout.xaxis.tickvals)


def test_r2_is_written_as_r_squared():
    assert metric_label("r2") == "R²" and metric_label("accuracy") == "accuracy"
    fig = layer_curve(_sweep(), "r2")
    assert fig.layout.yaxis.title.text == "R²"
    assert "r2" not in fig.layout.title.text


@pytest.mark.parametrize("values", [[-2.13, -0.45], [0.0, 0.03], [1.0, 1.0], [-13.7, 42.2], [0.12, 0.77]])
def test_nice_ticks_are_round(values):
    (lo, hi), step = nice_ticks(values)
    assert lo <= min(values) and hi >= max(values)
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9
    for edge in (lo, hi):
        assert abs(edge / step - round(edge / step)) < 1e-6
    assert (hi - lo) / step <= 10


def test_strength_plot_second_axis_has_round_ticks():
    df = pd.DataFrame({"strength": [0.25, 0.5, 1.0], "success": [0.1, 0.4, 0.9], "ll_drop": [0.45, 0.9, 2.13],
                       "ll_drop_random": [0.4, 1.1, 1.7], "base_rate": [0.1] * 3})
    fig = steering_curve(df)
    y2 = fig.layout.yaxis2
    assert y2.dtick in (0.5, 1.0) and y2.tickformat in (".1f", ".0f")
    assert y2.range[0] <= 0.4 and y2.range[1] >= 2.13
    assert fig.layout.yaxis.range[1] == pytest.approx(1.02)
    assert list(fig.layout.xaxis.tickvals) == [0.25, 0.5, 1.0]


def test_patching_heatmap_layers_are_integers():
    df = pd.DataFrame({"layer": [0, 0, 1, 1, 2, 2], "t0": [0.0, 0.5] * 3, "metric": np.linspace(0, 1, 6)})
    fig = patching_heatmap(df)
    assert list(fig.layout.yaxis.tickvals) == [0, 1, 2]


def test_label_share_bars_use_genre_colours():
    shares = pd.DataFrame({"jazz": [0.5, 0.2], "rock": [0.5, 0.8]},
                          index=pd.MultiIndex.from_tuples([("a", 0), ("a", 1)], names=["trial", "segment"]))
    fig = label_share_bars(shares, facet="segment")
    colours = {t.name: t.marker.color for t in fig.data}
    assert colours["jazz"] == GENRE_COLORS["jazz"] and colours["rock"] == GENRE_COLORS["rock"]
    assert plots.label_color("none") == GENRE_COLORS["none"]
