"""Directions: difference of means and probe columns against manual numpy, PCA against scikit-learn,
cosine table, safetensors round trip and refusal of corrupt files."""
import json
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA

from mstools.analysis.directions import (
    Direction,
    cosine_matrix,
    diff_means,
    diff_means_all,
    from_probe,
    from_probes,
    load_directions,
    pca_directions,
    random_direction,
    save_directions,
)
from mstools.analysis.probes import fit_probes

torch.set_num_threads(1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = np.array(["jazz"] * 10 + ["rock"] * 30 + ["folk"] * 5 + [None] * 3, dtype=object)
    X = rng.normal(size=(len(labels), 12)) + 2.0
    X[labels == "jazz", 0] += 3
    return torch.tensor(X, dtype=torch.float32), labels


def test_diff_means_equals_manual_numpy(data):
    X, labels = data
    Xn = X.double().numpy()
    m = {c: Xn[labels == c].mean(0) for c in ("jazz", "rock", "folk")}
    # balanced: class mean minus the mean of the other class means
    d = diff_means(X, labels, "jazz", hook="blocks.3.hook_resid_post", target="genre")
    raw = m["jazz"] - (m["rock"] + m["folk"]) / 2
    np.testing.assert_allclose(d.vector.numpy(), raw / np.linalg.norm(raw), rtol=1e-6)
    assert d.norm == pytest.approx(np.linalg.norm(raw), rel=1e-12)
    assert d.label == "genre=jazz" and d.method == "diff_means" and d.hook == "blocks.3.hook_resid_post"
    # pooled: minus the mean of every other labelled row (None rows ignored)
    d = diff_means(X, labels, "jazz", balanced=False)
    other = np.array([x is not None and x != "jazz" for x in labels])
    raw = m["jazz"] - Xn[other].mean(0)
    np.testing.assert_allclose(d.vector.numpy(), raw / np.linalg.norm(raw), rtol=1e-6)
    # A minus B
    d = diff_means(X, labels, "jazz", minus="folk", target="genre")
    raw = m["jazz"] - m["folk"]
    np.testing.assert_allclose(d.vector.numpy(), raw / np.linalg.norm(raw), rtol=1e-6)
    assert d.label == "genre=jazz-vs-folk" and d.meta["n_positive"] == 10 and d.meta["n_negative"] == 5
    assert set(diff_means_all(X, labels)) == {"jazz", "rock", "folk"}
    with pytest.raises(KeyError, match="classes are"):
        diff_means(X, labels, "techno")


def test_direction_from_probe_is_its_normalised_weight_column(data):
    X, labels = data
    keep = np.array([x is not None for x in labels])
    df = pd.DataFrame({"clip": np.arange(keep.sum()), "genre": labels[keep]})
    probes = fit_probes({"blocks.0.hook_resid_post": X[keep]}, df, "genre", method="ridge")
    p = probes["blocks.0.hook_resid_post"]
    W = p.weight.double().numpy()
    j, f = p.classes.index("jazz"), p.classes.index("folk")
    d = from_probe(p, "jazz")
    np.testing.assert_allclose(d.vector.numpy(), W[:, j] / np.linalg.norm(W[:, j]), rtol=1e-6)
    assert d.norm == pytest.approx(np.linalg.norm(W[:, j]), rel=1e-6) and d.method == "ridge"
    d = from_probe(p, "jazz", minus="folk")
    raw = W[:, j] - W[:, f]
    np.testing.assert_allclose(d.vector.numpy(), raw / np.linalg.norm(raw), rtol=1e-6)
    assert d.label == "genre=jazz-vs-folk"
    assert list(from_probes(probes, "rock")) == ["blocks.0.hook_resid_post"]
    # the probe direction and the class-mean direction agree on this data (jazz shifts feature 0)
    assert float(from_probe(p, "jazz").vector @ diff_means(X, labels, "jazz").vector) > 0.8


def test_pca_directions_match_sklearn(data):
    X, _ = data
    ref = PCA(n_components=3).fit(X.double().numpy())
    ds = pca_directions(X, 3, hook="h")
    for i, d in enumerate(ds):
        np.testing.assert_allclose(d.vector.numpy(), ref.components_[i], atol=1e-5)
        assert d.norm == pytest.approx(np.sqrt(ref.explained_variance_[i]), rel=1e-6)
        assert d.label == f"pc{i + 1}"


def test_cosine_matrix_equals_numpy():
    rng = np.random.default_rng(1)
    V = rng.normal(size=(4, 6))
    ds = [Direction.from_vector(torch.tensor(v), "h", f"d{i}", "pca") for i, v in enumerate(V)]
    ds.append(random_direction(3, seed=0, hook="other"))  # another width: NaN against the rest
    M = cosine_matrix(ds)
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    np.testing.assert_allclose(M.to_numpy()[:4, :4], U @ U.T, atol=1e-6)
    assert np.isnan(M.to_numpy()[4, :4]).all() and M.to_numpy()[4, 4] == pytest.approx(1.0)
    assert list(M.index) == [d.name for d in ds]


def test_direction_rejects_degenerate_vectors():
    with pytest.raises(ValueError, match="norm 0"):
        Direction.from_vector(torch.zeros(4), "h", "x", "diff_means")
    with pytest.raises(ValueError, match="non-finite"):
        Direction(torch.tensor([1.0, float("nan")]), "h", "x", "pca", 1.0)


def test_save_load_round_trip_is_bit_exact(tmp_path, data):
    X, labels = data
    ds = [diff_means(X, labels, "jazz", hook="blocks.1.hook_resid_post", target="genre"),
          random_direction(12, seed=3, hook="blocks.2.hook_mlp_out"),
          *pca_directions(X, 2, hook="blocks.1.hook_resid_post")]
    path = save_directions(tmp_path / "dirs.safetensors", ds)
    assert [p.name for p in tmp_path.iterdir()] == ["dirs.safetensors"]  # no temp file left behind
    back = load_directions(path)
    assert len(back) == len(ds)
    for a, b in zip(ds, back):
        assert torch.equal(a.vector, b.vector) and a.vector.dtype == b.vector.dtype
        assert (a.hook, a.label, a.method, a.norm) == (b.hook, b.label, b.method, b.norm)
        assert json.loads(json.dumps(a.meta)) == b.meta


def _header_len(path):
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    good = save_directions(tmp_path / "d.safetensors", [random_direction(16, seed=0, hook="h")])
    raw = good.read_bytes()
    n = _header_len(good)

    flipped = tmp_path / "flipped.safetensors"  # one bit of a vector changed
    b = bytearray(raw)
    b[8 + n + 5] ^= 0x01
    flipped.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="corrupt.*checksum"):
        load_directions(flipped)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated.safetensors.*not a readable safetensors"):
        load_directions(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_directions(garbage)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ValueError, match="not an mstools directions file"):
        load_directions(foreign)

    with pytest.raises(FileNotFoundError):
        load_directions(tmp_path / "missing.safetensors")


def test_recipes_make_every_direction_and_select_finds_one():
    import pandas as pd
    from mstools.analysis.directions import diff_means, from_probe, recipes, select
    from mstools.analysis.probes import fit_probes
    g = torch.Generator().manual_seed(0)
    y = ["a", "b", "c"] * 20
    X = {h: torch.randn(60, 5, generator=g) + torch.tensor([[float("abc".index(v))] * 5 for v in y])
         for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")}
    lab = pd.DataFrame({"clip": range(60), "g": y})
    ds = recipes(X, lab, "g", meta={"fingerprint": "m"})
    assert len(ds) == 2 * 3 * 3 and all(d.meta["fingerprint"] == "m" for d in ds)
    h = "blocks.1.hook_resid_post"
    d = select(ds, hook=h, method="diff_means", label="b")
    assert torch.allclose(d.vector, diff_means(X[h], lab["g"], "b", hook=h, target="g").vector)
    r = select(ds, hook=h, method="ridge", label="g=c")
    assert torch.allclose(r.vector, from_probe(fit_probes(X, lab, "g", "ridge")[h], "c").vector)
    with pytest.raises(KeyError, match="match"):
        select(ds, method="ridge", label="c")      # one per hook: two match
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes(X, lab, "g", methods=("pca",))
