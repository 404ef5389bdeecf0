"""Probes: solvers against scikit-learn, splits by clip, controls, metrics, the sweep table."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import t as student_t
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score, r2_score

from mstools.analysis.probes import (
    accuracy,
    centered_gram,
    f1_macro,
    fit_logistic,
    fit_probes,
    fit_ridge,
    fit_seed_recipe,
    group_split,
    layer_of,
    probe_sweep,
    r2,
    shuffle_by_clip,
    summarize,
)

torch.set_num_threads(1)


def _anisotropic(L, N, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, D, dtype=dtype)
    return torch.randn(L, N, D, generator=g, dtype=dtype) * scales + 5.0  # far from centred on purpose


def _structured(n_clips=60, frames=4, D=24, K=4, signal=2.5, seed=0):
    """Per-frame features of clips whose class is linearly readable at layer 1 only (layer 0: noise)."""
    g = torch.Generator().manual_seed(seed)
    clip_y = torch.arange(n_clips) % K
    y = clip_y.repeat_interleave(frames)
    clips = torch.arange(n_clips).repeat_interleave(frames)
    means = torch.randn(K, D, generator=g)
    clip_off = torch.randn(n_clips, D, generator=g).repeat_interleave(frames, 0) * 0.3
    X0 = torch.randn(len(y), D, generator=g) + clip_off
    X1 = torch.randn(len(y), D, generator=g) + clip_off + signal * means[y]
    names = np.array(["jazz", "rock", "folk", "techno"])[:K]
    labels = pd.DataFrame({"clip": clips.numpy(), "genre": names[y.numpy()]})
    feats = {"blocks.0.hook_resid_post": X0, "blocks.1.hook_resid_post": X1}
    return feats, labels, y


# ---------------------------------------------------------------------------- ridge
@pytest.mark.parametrize("N,D", [(120, 16), (12, 40)])  # primal (N >= D) and dual (N < D) forms
def test_ridge_matches_sklearn_weights_and_predictions(N, D):
    X = _anisotropic(3, N, D)
    Y = torch.randn(N, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alphas = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    fit = fit_ridge(X, Y, alpha=alphas, dtype=torch.float64)
    assert fit.info["form"] == ("primal" if N >= D else "dual")
    for l in range(3):
        ref = Ridge(alpha=float(alphas[l])).fit(X[l].numpy(), Y.numpy())
        np.testing.assert_allclose(fit.weight[l].numpy(), ref.coef_.T, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.bias[l].numpy(), ref.intercept_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.scores(X)[l].numpy(), ref.predict(X[l].numpy()), rtol=1e-7, atol=1e-8)
    # float32 Gram products (the fast default) stay close to the float64 answer
    fit32 = fit_ridge(X.float(), Y, alpha=alphas)
    np.testing.assert_allclose(fit32.scores(X.float()).double().numpy(), fit.scores(X).numpy(), atol=2e-3)


def test_ridge_without_intercept_and_1d_target_match_sklearn():
    X = _anisotropic(1, 50, 6)[0]
    y = torch.randn(50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fit = fit_ridge(X, y, alpha=2.0, fit_intercept=False, dtype=torch.float64)
    ref = Ridge(alpha=2.0, fit_intercept=False).fit(X.numpy(), y.numpy())
    np.testing.assert_allclose(fit.weight[0, :, 0].numpy(), ref.coef_, rtol=1e-8)
    assert float(fit.bias.abs().max()) == 0.0


def test_ridge_singular_gram_is_refused_with_advice():
    X = torch.zeros(1, 10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha > 0"):
        fit_ridge(X, torch.ones(10), alpha=0.0, dtype=torch.float64)


def test_centered_gram_equals_numpy_centered_product():
    X = _anisotropic(2, 300, 260)  # D >= 256: the block lower-triangle path
    Xn = X.numpy()
    G, mu = centered_gram(X, dtype=torch.float64)
    G_low, _ = centered_gram(X, dtype=torch.float64, lower_only=True)
    for l in range(2):
        Xc = Xn[l] - Xn[l].mean(0)
        np.testing.assert_allclose(G[l].numpy(), Xc.T @ Xc, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(G_low[l].numpy(), np.tril(Xc.T @ Xc), rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(mu[l].numpy(), Xn[l].mean(0), rtol=1e-12)


def test_ridge_blocked_cholesky_path_matches_sklearn():
    X = _anisotropic(2, 400, 300)  # D > 128: multi-block Cholesky on a lower-triangle Gram
    Y = torch.randn(400, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fit = fit_ridge(X, Y, alpha=3.0, dtype=torch.float64)
    for l in range(2):
        ref = Ridge(alpha=3.0).fit(X[l].numpy(), Y.numpy())
        np.testing.assert_allclose(fit.weight[l].numpy(), ref.coef_.T, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(fit.scores(X)[l].numpy(), ref.predict(X[l].numpy()), rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------------- logistic
@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("precondition, layer_chunk", [("diag", None), ("gram", None), ("none", None), ("diag", 1)])
def test_logistic_matches_sklearn(K, precondition, layer_chunk):
    N, D = 240, 10
    g = torch.Generator().manual_seed(K)
    X = _anisotropic(2, N, D, seed=K) * 0.5
    y = torch.randint(0, K, (N,), generator=g)
    X[:, :, :K] += 1.5 * torch.nn.functional.one_hot(y, K).double()
    fit = fit_logistic(X, y, C=0.3, tol=1e-9, max_iter=1000, dtype=torch.float64, precondition=precondition,
                       layer_chunk=layer_chunk)  # 1: each layer on its own; None: both in one block here
    assert bool(fit.info["converged"].all()) and fit.info["n_iter"].shape == (2,)
    for l in range(2):
        ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(X[l].numpy(), y.numpy())
        P = torch.softmax(fit.scores(X)[l], -1).numpy()
        np.testing.assert_allclose(P, ref.predict_proba(X[l].numpy()), atol=1e-6)
        np.testing.assert_array_equal(P.argmax(1), ref.predict(X[l].numpy()))
        W = fit.weight[l].numpy()
        coef = W[:, 1] - W[:, 0] if K == 2 else W.T  # binary: sklearn keeps one vector w = w1 - w0
        np.testing.assert_allclose(coef, ref.coef_[0] if K == 2 else ref.coef_, atol=1e-5)


def _objective(X, y, W, b, C):
    """scikit-learn's scaled objective: mean cross-entropy + ||W||^2 / (2 C N)."""
    logp = torch.log_softmax(X @ W + b, -1)
    return float(-logp[torch.arange(len(y)), y].mean() + (W**2).sum() / (2 * C * len(y)))


def test_logistic_float32_defaults_agree_with_sklearn_defaults():
    feats, labels, y = _structured(n_clips=80, frames=2, D=16, signal=0.6)
    X = torch.stack(list(feats.values()))
    X = ((X - X.mean(1, keepdim=True)) / X.std(1, keepdim=True)).double()
    fit = fit_logistic(X.float(), y)  # float32, C=1, tol=1e-4, max_iter=100, auto preconditioner
    exact = fit_logistic(X, y, tol=1e-10, max_iter=2000, dtype=torch.float64)
    for l in range(2):
        ref = LogisticRegression().fit(X[l].numpy(), y.numpy())
        W_ref, b_ref = torch.as_tensor(ref.coef_.T), torch.as_tensor(ref.intercept_)
        best = _objective(X[l], y, exact.weight[l], exact.bias[l], 1.0)
        # both stop at the first iterate with max |gradient| <= 1e-4: near the same optimum
        assert _objective(X[l], y, fit.weight[l].double(), fit.bias[l].double(), 1.0) - best < 1e-4
        assert _objective(X[l], y, W_ref, b_ref, 1.0) - best < 1e-4
        agree = (fit.scores(X.float())[l].argmax(-1).numpy() == ref.predict(X[l].numpy())).mean()
        assert agree > 0.97


# ---------------------------------------------------------------------------- seed recipe
def test_seed_recipe_batched_equals_per_layer_nn_linear_adam():
    L, N, D, K, seed = 3, 50, 6, 3, 7
    X = torch.randn(L, N, D, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(N) % K
    fit = fit_seed_recipe(X, y, epochs=5, batch_size=16, seed=seed)
    T = torch.nn.functional.one_hot(y, K).float() * 2 - 1
    for l in range(L):  # the recipe as plain code: one layer at a time
        gen = torch.Generator().manual_seed(seed)
        W0 = (torch.rand(L, K, D, generator=gen) * 2 - 1) / math.sqrt(D)
        probe = torch.nn.Linear(D, K, bias=False)
        with torch.no_grad():
            probe.weight.copy_(W0[l])
        opt = torch.optim.Adam(probe.parameters(), lr=5e-3)
        x = X[l] / X[l].norm(dim=-1, keepdim=True)
        for _ in range(5):
            perm = torch.randperm(N, generator=gen)
            for i in range(0, N, 16):
                idx = perm[i:i + 16]
                opt.zero_grad()
                torch.nn.MSELoss()(probe(x[idx]), T[idx]).backward()
                opt.step()
        torch.testing.assert_close(fit.weight[l], probe.weight.detach().T, rtol=1e-5, atol=1e-6)
    assert fit.input_norm == "l2" and float(fit.bias.abs().max()) == 0.0
    chunked = fit_seed_recipe(X, y, epochs=5, batch_size=16, seed=seed, layer_chunk=1)
    torch.testing.assert_close(chunked.weight, fit.weight, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- metrics
def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    yt = rng.integers(0, 4, 60)
    yp = rng.integers(0, 5, (3, 60))  # class 4 predicted but never true
    yp[1] = yt  # a perfect layer
    acc = accuracy(torch.as_tensor(yt), torch.as_tensor(yp)).numpy()
    f1 = f1_macro(torch.as_tensor(yt), torch.as_tensor(yp), n_classes=6).numpy()  # class 5: absent everywhere
    for l in range(3):
        assert acc[l] == pytest.approx((yp[l] == yt).mean())
        assert f1[l] == pytest.approx(f1_score(yt, yp[l], average="macro", zero_division=0))
    Yt = rng.normal(size=(40, 3))
    Yt[:, 2] = 1.0  # constant column
    Yp = Yt[None] + rng.normal(scale=0.5, size=(2, 40, 3))
    Yp[1, :, 2] = 1.0
    got = r2(torch.as_tensor(Yt), torch.as_tensor(Yp)).numpy()
    for l in range(2):
        assert got[l] == pytest.approx(r2_score(Yt, Yp[l]))


# ---------------------------------------------------------------------------- splits and controls
def test_group_split_never_puts_a_clip_in_train_and_test():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), rng.integers(1, 9, 50))  # clips of 1..8 frames
    clip_class = rng.integers(0, 3, 50)
    strata = clip_class[groups]
    for seed in range(5):
        for s in (None, strata):
            tr, te = group_split(groups, s, test_size=0.3, seed=seed)
            assert set(groups[tr]).isdisjoint(groups[te])
            assert len(tr) + len(te) == len(groups) and len(np.intersect1d(tr, te)) == 0
        tr, te = group_split(groups, strata, test_size=0.3, seed=seed)
        for c in range(3):  # stratified: every class on both sides, ~30 % of its clips in test
            n_c = (clip_class == c).sum()
            n_test = len(set(groups[te][strata[te] == c]))
            assert 1 <= n_test < n_c and abs(n_test - 0.3 * n_c) <= 1
    a = group_split(groups, strata, seed=3)
    b = group_split(groups, strata, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_shuffle_by_clip_moves_whole_clips():
    groups = np.repeat(np.arange(30), 4)
    values = np.repeat(np.arange(30) % 3, 4).astype(str)
    out = shuffle_by_clip(values, groups, seed=1)
    for c in range(30):
        assert len(set(out[groups == c])) == 1  # a clip keeps one label
    assert sorted(out[::4]) == sorted(values[::4])  # same clip-level label counts
    assert (out != values).any()


def test_shuffled_control_near_chance_while_real_probe_near_perfect():
    feats, labels, _ = _structured()
    untrained = {h: torch.randn_like(v) for h, v in feats.items()}
    df = probe_sweep({"trained": feats, "untrained": untrained}, labels, targets=["genre"],
                     methods=("logistic", "ridge"), seeds=(0, 1, 2))
    s = summarize(df).set_index(["model", "layer", "method", "control"])
    for method in ("logistic", "ridge"):
        assert s.loc[("trained", 1, method, "none"), "accuracy_mean"] >= 0.95
        assert s.loc[("trained", 1, method, "shuffled"), "accuracy_mean"] <= 0.25 + 0.2
        assert s.loc[("untrained", 1, method, "none"), "accuracy_mean"] <= 0.25 + 0.2
        assert s.loc[("trained", 0, method, "none"), "accuracy_mean"] <= 0.25 + 0.2
    assert len(df) == 2 * 2 * 2 * 2 * 3  # models x hooks x methods x controls x seeds
    assert set(df["layer"]) == {0, 1} and df["converged"].all()
    assert (df["n_train"] + df["n_test"] == len(labels)).all()


def test_sweep_rows_equal_an_independent_sklearn_pipeline():
    feats, labels, _ = _structured(signal=0.4)
    labels["bpm"] = np.random.default_rng(0).normal(120, 10, len(labels))
    X1 = feats["blocks.1.hook_resid_post"]
    X1[:, 0] += torch.tensor(labels["bpm"].to_numpy(), dtype=torch.float32) / 10
    probes = {}
    df = probe_sweep(feats, labels, targets=["genre", "bpm"], methods=("ridge",), seeds=(4,), controls=(),
                     options={"ridge": {"alpha": 3.0}}, probes_out=probes)
    groups = labels["clip"].to_numpy()
    classes, codes = np.unique(labels["genre"].to_numpy(), return_inverse=True)
    tr, te = group_split(groups, codes, test_size=0.25, seed=4)
    Xn = X1.double().numpy()
    mu, sd = Xn[tr].mean(0), Xn[tr].std(0)
    Ztr, Zte = (Xn[tr] - mu) / sd, (Xn[te] - mu) / sd
    onehot = np.eye(len(classes))[codes]
    ref = Ridge(alpha=3.0).fit(Ztr, onehot[tr])
    row = df.query("target == 'genre' and layer == 1").iloc[0]
    pred = ref.predict(Zte)
    assert row["accuracy"] == pytest.approx((pred.argmax(1) == codes[te]).mean())
    assert row["f1_macro"] == pytest.approx(f1_score(codes[te], pred.argmax(1), average="macro"))
    assert row["r2"] == pytest.approx(r2_score(onehot[te], pred), abs=1e-4)
    # the kept probe works on raw activations (standardisation folded into its weights)
    p = probes[("trained", "blocks.1.hook_resid_post", "genre", "ridge", "none", 4)]
    np.testing.assert_allclose(p.scores(X1[te]).double().numpy(), pred, atol=2e-3)
    # continuous target: ridge R² on the value
    tr_c, te_c = group_split(groups, None, test_size=0.25, seed=4)
    mu, sd = Xn[tr_c].mean(0), Xn[tr_c].std(0)
    ref_c = Ridge(alpha=3.0).fit((Xn[tr_c] - mu) / sd, labels["bpm"].to_numpy()[tr_c])
    row_c = df.query("target == 'bpm' and layer == 1").iloc[0]
    assert row_c["r2"] == pytest.approx(ref_c.score((Xn[te_c] - mu) / sd, labels["bpm"].to_numpy()[te_c]), abs=1e-4)
    assert math.isnan(row_c["accuracy"])


def test_seed_method_in_sweep_and_input_forms_agree():
    feats, labels, _ = _structured(n_clips=40, frames=2)
    kw = dict(targets=["genre"], methods=("seed", "logistic"), seeds=(0,), controls=(),
              options={"seed": {"epochs": 30, "batch_size": 32}})
    a = probe_sweep(feats, labels, **kw)
    hooks = list(feats)
    b = probe_sweep(torch.stack([feats[h] for h in hooks]), labels, hooks=hooks, **kw)

    class Store:  # anything with .hooks and .features(hook)
        def __init__(self, f):
            self.hooks, self._f = list(f), f

        def features(self, hook):
            return self._f[hook].half()

    c = probe_sweep({"trained": Store(feats)}, labels, **kw)
    for other in (b, c):
        pd.testing.assert_frame_equal(a.drop(columns="r2"), other.drop(columns="r2"), check_exact=False, atol=0.02)
    assert a.query("method == 'seed' and layer == 1")["accuracy"].iloc[0] > 0.9


def test_summarize_interval_is_a_t_interval():
    df = pd.DataFrame({"model": "trained", "hook": "blocks.2.x", "layer": 2, "target": "genre", "method": "ridge",
                       "control": "none", "seed": [0, 1, 2, 3], "accuracy": [0.7, 0.8, 0.75, 0.9]})
    s = summarize(df, ["accuracy"]).iloc[0]
    v = df["accuracy"].to_numpy()
    half = student_t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert s["accuracy_mean"] == pytest.approx(v.mean())
    assert s["accuracy_lo"] == pytest.approx(v.mean() - half) and s["accuracy_hi"] == pytest.approx(v.mean() + half)
    assert s["n_seeds"] == 4


def test_fit_probes_all_rows_and_layer_parsing():
    feats, labels, y = _structured()
    probes = fit_probes(feats, labels, "genre", method="logistic")
    p = probes["blocks.1.hook_resid_post"]
    assert p.classes == ["folk", "jazz", "rock", "techno"] and p.weight.shape == (24, 4)
    assert (p.predict(feats["blocks.1.hook_resid_post"]) == labels["genre"].to_numpy()).mean() > 0.97
    assert [layer_of(h) for h in ("blocks.7.attn.hook_z", "hook_embed", "ln_final.hook_normalized")] == [7, -1, -1]


def test_clear_errors():
    feats, labels, _ = _structured(n_clips=8)
    with pytest.raises(KeyError, match="'clip' column"):
        probe_sweep(feats, labels.drop(columns="clip"), targets=["genre"])
    with pytest.raises(ValueError, match="rows but labels has"):
        probe_sweep(feats, labels.iloc[:-1], targets=["genre"])
    with pytest.raises(KeyError, match="not a column"):
        probe_sweep(feats, labels, targets=["mood"])
    with pytest.raises(ValueError, match="unknown method"):
        probe_sweep(feats, labels, methods=("svm",))


def test_best_hook_breaks_ties_by_r2_then_by_the_earlier_layer():
    from mstools.analysis.probes import best_hook
    base = dict(model="trained", control="none", method="logistic", target="genre")
    s = pd.DataFrame([dict(base, hook="embed", layer=-1, accuracy_mean=1.0, r2_mean=0.99),
                      dict(base, hook="h0", layer=0, accuracy_mean=0.8, r2_mean=0.9),
                      dict(base, hook="h1", layer=1, accuracy_mean=1.0, r2_mean=0.7),
                      dict(base, hook="h2", layer=2, accuracy_mean=1.0, r2_mean=0.7),
                      dict(base, hook="h3", layer=3, accuracy_mean=1.0, r2_mean=0.6),
                      dict(base, hook="h3", layer=3, accuracy_mean=1.0, r2_mean=0.95, control="shuffled")])
    assert best_hook(s, "genre") == "h1"       # tie on accuracy and on R²: the earlier layer
    s.loc[3, "r2_mean"] = 0.8
    assert best_hook(s, "genre") == "h2"       # tie on accuracy: the higher R²
    with pytest.raises(ValueError, match="no probes"):
        best_hook(s, "tempo")
