"""Sparse autoencoders: references are computed from the weights by hand, scikit-learn, or the data."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mstools.steering import SteeringVector

from conftest import tiny_model

from mstools.analysis.sae import (SAE, StoreBatches, best_features, encode, evaluate_sae,
                                  feature_auroc, features_needed, pool_by_clip, sparse_probe, splice,
                                  train_sae)
from mstools.data.store import ActivationStore

torch.set_num_threads(1)
HOOK = "blocks.0.hook_resid_post"


def _sparse_data(n=6000, d=16, atoms=24, active=2, seed=0):
    """Rows that are sums of ``active`` of ``atoms`` unit directions with positive weights."""
    g = torch.Generator().manual_seed(seed)
    dic = torch.randn(atoms, d, generator=g)
    dic = dic / dic.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(atoms, generator=g)[:active] for _ in range(n)])
    w = torch.rand(n, active, generator=g) + 0.5
    z = torch.zeros(n, atoms).scatter_(1, idx, w)
    return z @ dic + 3.0, z


@pytest.fixture(scope="module")
def trained():
    x, _ = _sparse_data()
    sae, log = train_sae(x, hook=HOOK, fingerprint="fp", width=48, k=2, epochs=8, batch_size=256,
                         lr=3e-3)
    return sae, x, log


def test_reconstructs_sparse_data(trained):
    sae, x, log = trained
    ev = evaluate_sae(sae, x)
    assert ev["fve"] > 0.9 and ev["l0"] == pytest.approx(2.0) and ev["rows"] == len(x)
    assert list(log.columns) == ["step", "rows", "fvu", "auxk", "dead"]


def test_encode_decode_match_the_weights(trained):
    sae, x, _ = trained
    c = sae.coder
    xn = (x[:50] - sae.mean) / sae.scale
    pre = torch.relu((xn - c.b_dec) @ c.encoder.weight.T + c.encoder.bias)
    top = pre.topk(sae.k, dim=1)
    ref = torch.zeros_like(pre).scatter_(1, top.indices, top.values)
    codes = sae.encode(x[:50])
    assert torch.allclose(codes, ref, atol=1e-5)
    recon = (ref @ c.W_dec + c.b_dec) * sae.scale + sae.mean
    assert torch.allclose(sae.decode(codes), recon, atol=1e-4)
    assert torch.allclose(sae.reconstruct(x[:50]), recon, atol=1e-4)
    assert sae.encode(x[:6].reshape(2, 3, -1)).shape == (2, 3, sae.width)


def test_fve_definition(trained):
    sae, x, _ = trained
    xh = sae.reconstruct(x).double()
    ref = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert evaluate_sae(sae, x, batch_size=500)["fve"] == pytest.approx(float(ref), abs=1e-6)


def test_store_streaming_reads_every_row_and_trains(tmp_path):
    x, _ = _sparse_data(n=3000)
    store = ActivationStore.create(tmp_path / "s", fingerprint="fp", hooks={HOOK: [16]}, pooling="frame")
    with store.writer(shard_rows=700) as w:
        for c in range(30):
            w.add([c], {HOOK: x[c * 100:(c + 1) * 100][None]}, [{"genre": "jazz"}])
    rows = torch.cat(list(StoreBatches(store, HOOK, batch_size=256, shuffle=False)))
    assert torch.equal(rows, x)
    shuffled = list(StoreBatches(store, HOOK, batch_size=256, buffer_rows=1024, read_rows=300))
    assert all(len(b) <= 256 for b in shuffled)
    assert torch.equal(torch.cat(shuffled).sort(0).values, x.sort(0).values)  # every row once
    sae, _ = train_sae(StoreBatches(store, HOOK, batch_size=256), hook=HOOK, fingerprint="fp",
                       width=48, k=2, epochs=12, lr=3e-3)
    from_tensor, _ = train_sae(x, hook=HOOK, fingerprint="fp", width=48, k=2, epochs=12,
                               batch_size=256, lr=3e-3)
    fve = evaluate_sae(sae, StoreBatches(store, HOOK, shuffle=False))["fve"]
    assert fve > 0.8 and fve == pytest.approx(evaluate_sae(from_tensor, x)["fve"], abs=0.05)


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score
    g = torch.Generator().manual_seed(1)
    codes = torch.relu(torch.randn(200, 5, generator=g))  # many ties at 0
    labels = pd.DataFrame({"genre": np.where(np.arange(200) % 3 == 0, "jazz", "rock")})
    codes[labels["genre"].to_numpy() == "jazz", 2] += 1.0
    auc = feature_auroc(codes, labels, ["genre"])
    for f in range(5):
        got = auc.query("value == 'jazz' and feature == @f")["auroc"].item()
        assert got == pytest.approx(roc_auc_score(labels["genre"] == "jazz", codes[:, f]))
    assert best_features(auc).set_index("value").loc["jazz", "feature"] == 2


def test_pool_by_clip_and_sparse_probe():
    g = torch.Generator().manual_seed(2)
    clips = np.repeat(np.arange(80), 5)
    labels = pd.DataFrame({"clip": clips, "genre": np.where(clips % 2, "jazz", "rock")})
    codes = torch.relu(torch.randn(400, 10, generator=g))
    codes[labels["genre"].to_numpy() == "jazz", 7] += 2.0
    pooled, lab = pool_by_clip(codes, labels)
    assert pooled.shape == (80, 10) and lab["clip"].tolist() == list(range(80))
    assert torch.allclose(pooled[3], codes[15:20].mean(0))
    curve = sparse_probe(pooled, lab, "genre", "jazz", ks=(1, 3))
    assert curve.loc[0, "features"] == [7] and curve.loc[0, "balanced_accuracy"] > 0.9
    assert features_needed(curve) == 1
    assert math.isinf(features_needed(curve, level=1.01))


def test_feature_direction_and_save_load(trained, tmp_path):
    sae, x, _ = trained
    d = sae.feature_direction(3)
    v = SteeringVector.from_directions(d, "fp")
    ref = sae.coder.W_dec[3].detach() * sae.scale
    assert torch.allclose(v[HOOK], ref / ref.norm()) and v.units == "unit" and d.hook == HOOK
    back = SAE.load(sae.save(tmp_path / "sae"))
    assert torch.equal(back.encode(x[:20]), sae.encode(x[:20])) and back.hook == HOOK
    with pytest.raises(IndexError):
        sae.direction(sae.width)


def test_splice_replaces_the_activation():
    model = tiny_model("audiocraft")
    codes = torch.randint(0, model.card, (2, model.num_codebooks, 10))
    _, cache = model.run_with_cache(codes, None, names_filter=[HOOK])
    x = cache[HOOK].reshape(-1, model.d_model)
    sae, _ = train_sae(x.repeat(20, 1), hook=HOOK, fingerprint=model.fingerprint, width=64, k=4)
    seen = {}
    with model.hooks(splice(sae) + [(HOOK, lambda t, hook: seen.setdefault("x", t.clone()))]):
        model(codes, None)
    assert torch.allclose(seen["x"], sae.reconstruct(cache[HOOK]), atol=1e-6)


def test_errors():
    x = torch.randn(100, 8)
    with pytest.raises(ValueError, match="width"):
        train_sae(x, hook=HOOK, fingerprint="fp", width=0, k=1)
    with pytest.raises(ValueError, match="k must"):
        train_sae(x, hook=HOOK, fingerprint="fp", width=4, k=5)
    with pytest.raises(TypeError, match="re-iterable"):
        train_sae(iter([x]), hook=HOOK, fingerprint="fp", width=4, k=1)
    sae, _ = train_sae(x, hook=HOOK, fingerprint="fp", width=4, k=1)
    with pytest.raises(ValueError, match="width 9"):
        sae.encode(torch.randn(2, 9))
    assert encode(sae, x).shape == (100, 4)
