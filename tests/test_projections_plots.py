"""Projections against scikit-learn and hand computation; plots return figures with the expected traces."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from scipy.stats import t as student_t
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix as sk_confusion

from mstools.analysis.directions import Direction, cosine_matrix, diff_means_all, random_direction
from mstools.ui.plots import confusion_matrix, layer_curve, projection_scatter, similarity_heatmap
from mstools.analysis.projections import direction_arrows, pca, umap_embed

torch.set_num_threads(1)


def _clusters(n=30, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, D, generator=g) * 4
    y = torch.arange(3 * n) % 3
    X = torch.randn(3 * n, D, generator=g) + centers[y]
    return X, np.array(["jazz", "rock", "folk"])[y.numpy()]


@pytest.mark.parametrize("N,D", [(90, 8), (6, 10)])  # eigh path (N >= D) and SVD path (N < D)
def test_pca_matches_sklearn(N, D):
    X = _clusters()[0][:N, :D] if D <= 8 else torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    k = 3
    p = pca(X, k)
    ref = PCA(n_components=k).fit(X.double().numpy())
    np.testing.assert_allclose(p.components.numpy(), ref.components_, atol=1e-8)
    np.testing.assert_allclose(p.explained_variance.numpy(), ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(p.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(p.transform(X).numpy(), ref.transform(X.double().numpy()), atol=1e-8)


def test_pca_arrows_are_the_projected_vectors():
    X, labels = _clusters()
    p = pca(X, 2)
    dirs = diff_means_all(X, labels, hook="h", target="genre")
    arrows = direction_arrows(p, list(dirs.values()), scale=2.5)  # default origin: the data mean -> (0, 0)
    for (_, row), d in zip(arrows.iterrows(), dirs.values()):
        np.testing.assert_allclose([row.x0, row.y0], [0.0, 0.0], atol=1e-9)
        expected = 2.5 * (p.components @ d.vector.double()).numpy()
        np.testing.assert_allclose([row.x1 - row.x0, row.y1 - row.y0], expected, atol=1e-9)
        assert row["name"] == d.name
    # arrows from class means: start at the projected class mean
    means = {c: X[torch.as_tensor(labels == c)].mean(0) for c in dirs}
    arrows = direction_arrows(p, list(dirs.values()), origins={f"genre={c}": m for c, m in means.items()})
    np.testing.assert_allclose(arrows[["x0", "y0"]].to_numpy()[0], p.transform(means["folk"][None])[0].numpy())
    assert np.hypot(arrows.x1 - arrows.x0, arrows.y1 - arrows.y0).max() <= p.spread + 1e-9


@pytest.mark.slow  # umap-learn compiles with numba on first use (~20 s here)
def test_umap_is_seeded_and_places_direction_arrows():
    X, labels = _clusters()
    a = umap_embed(X, seed=0, n_neighbors=10, n_epochs=60)
    b = umap_embed(X, seed=0, n_neighbors=10, n_epochs=60)
    assert a.embedding.shape == (90, 2) and np.array_equal(a.embedding, b.embedding)
    # clusters stay apart: each point's nearest other point in the embedding has its own label
    E = a.embedding
    dist = ((E[:, None] - E[None]) ** 2).sum(-1) + np.eye(len(E)) * 1e9
    assert (labels[dist.argmin(1)] == labels).mean() > 0.95
    d = random_direction(8, seed=1, hook="h")
    arrows = direction_arrows(a, [d])
    start = a.transform(a.mean[None])[0].numpy()
    np.testing.assert_allclose(arrows[["x0", "y0"]].to_numpy()[0], start, atol=1e-6)
    assert np.isfinite(arrows[["x1", "y1"]].to_numpy()).all()


def _sweep_table():
    rows = []
    rng = np.random.default_rng(0)
    for model in ("trained", "untrained"):
        for control in ("none", "shuffled"):
            for layer in range(3):
                for seed in range(3):
                    acc = 0.25 + (0.2 * layer if model == "trained" and control == "none" else 0) + rng.normal(0, 0.02)
                    rows.append(dict(model=model, hook=f"blocks.{layer}.hook_resid_post", layer=layer, target="genre",
                                     method="ridge", control=control, seed=seed, accuracy=acc, f1_macro=acc, r2=0.0))
    return pd.DataFrame(rows)


def test_layer_curve_traces_and_intervals():
    df = _sweep_table()
    fig = layer_curve(df, "accuracy")
    assert isinstance(fig, go.Figure)
    lines = {t.name: t for t in fig.data if t.fill is None}
    bands = {t.name: t for t in fig.data if t.fill == "toself"}
    assert set(lines) == {"trained · ridge · genre", "untrained · ridge · genre",
                          "trained · ridge · genre · shuffled", "untrained · ridge · genre · shuffled"}
    assert set(bands) == {f"{n} (95% interval)" for n in lines}
    assert lines["trained · ridge · genre"].line.dash == "solid"
    assert lines["untrained · ridge · genre"].line.dash == "dash"
    assert lines["trained · ridge · genre · shuffled"].line.dash == "dot"
    sub = df.query("model == 'trained' and control == 'none'").sort_values("layer")
    v = sub.groupby("layer")["accuracy"]
    np.testing.assert_allclose(lines["trained · ridge · genre"].y, v.mean().to_numpy())
    half = student_t.ppf(0.975, 2) * v.std(ddof=1).to_numpy() / np.sqrt(3)
    band = bands["trained · ridge · genre (95% interval)"]
    np.testing.assert_allclose(band.y[:3], v.mean().to_numpy() + half)  # upper edge, then lower edge reversed
    np.testing.assert_allclose(band.y[3:], (v.mean().to_numpy() - half)[::-1])


def test_confusion_matrix_equals_sklearn():
    rng = np.random.default_rng(0)
    labs = ["folk", "jazz", "rock"]
    yt = rng.choice(labs, 50)
    yp = np.where(rng.random(50) < 0.7, yt, rng.choice(labs, 50))
    fig = confusion_matrix(yt, yp, labels=labs)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), sk_confusion(yt, yp, labels=labs, normalize="true"))
    fig = confusion_matrix(yt, yp, normalize=None)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), sk_confusion(yt, yp, labels=sorted(labs)))
    assert list(fig.data[0].x) == sorted(labs)


def test_similarity_heatmap_and_projection_scatter():
    X, labels = _clusters()
    dirs = list(diff_means_all(X, labels, hook="h").values())
    cm = cosine_matrix(dirs)
    fig = similarity_heatmap(cm)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), cm.to_numpy())
    assert list(fig.data[0].x) == [d.name for d in dirs] and (fig.data[0].zmin, fig.data[0].zmax) == (-1, 1)
    p = pca(X, 2)
    arrows = direction_arrows(p, dirs)
    fig = projection_scatter(p.transform(X), labels, arrows)
    markers = [t for t in fig.data if t.mode == "markers"]
    arrow_lines = [t for t in fig.data if t.mode == "lines"]
    assert sorted(t.name for t in markers) == ["folk", "jazz", "rock"]
    assert sum(len(t.x) for t in markers) == len(X)
    assert [t.name for t in arrow_lines] == [f"→ {d.name}" for d in dirs]
    assert len(fig.layout.annotations) == len(dirs)
    ann = fig.layout.annotations[0]
    assert (ann.x, ann.y, ann.ax, ann.ay) == pytest.approx(tuple(arrows.loc[0, ["x1", "y1", "x0", "y0"]]))
    with pytest.raises(ValueError, match="labels has"):
        projection_scatter(p.transform(X), labels[:-1])


def test_direction_objects_keep_names_in_arrows():
    X, _ = _clusters()
    d = Direction.from_vector(torch.ones(8), "blocks.0.hook_resid_post", "genre=jazz", "ridge")
    arrows = direction_arrows(pca(X, 2), {"mine": d})
    assert list(arrows["name"]) == ["mine"]


def test_steering_curve_traces_follow_the_table():
    import pandas as pd
    from mstools.ui.plots import steering_curve
    df = pd.DataFrame({"trial": ["a=0.5", "a=1"], "strength": [0.5, 1.0], "success": [0.2, 0.8],
                       "success_lo": [0.1, 0.6], "success_hi": [0.4, 0.9], "base_rate": [0.1, 0.1],
                       "random_mean": [0.1, 0.0], "random_min": [0.0, 0.0], "random_max": [0.2, 0.1],
                       "ll_drop": [0.45, 2.13], "ll_drop_random": [0.3, 1.5]})
    fig = steering_curve(df)
    lines = {t.name: t for t in fig.data if t.fill is None}
    assert list(lines["steered"].y) == [0.2, 0.8]
    assert list(lines["random directions (mean)"].y) == [0.1, 0.0]
    assert list(lines["unsteered (base rate)"].y) == [0.1, 0.1]
    drop = lines["log-likelihood drop per frame (steered)"]
    assert list(drop.y) == [0.45, 2.13] and drop.yaxis == "y2"
