"""Per-second readout against manual computations from run_with_cache and scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mstools
from mstools.analysis.readout import per_second, second_index

H = "blocks.2.hook_resid_post"
PROMPTS = ["fast rock with brass", "slow jazz with piano"]


@pytest.fixture(scope="module")
def model():
    return mstools.load_musicgen("testbed")


@pytest.fixture(scope="module")
def clips(model):
    out = model.generate(PROMPTS, duration=3.0, seed=0, decode=False)
    return out.codes  # [2, 4, 30]


@pytest.fixture(scope="module")
def acts(model, clips):
    """Teacher-forced activations, one clip at a time (no batch effects), and their seconds."""
    xs = [model.run_with_cache(clips[i:i + 1], [PROMPTS[i]], names_filter=[H])[1] for i in range(2)]
    return torch.cat([c[H] for c in xs]).double(), xs[0].seconds


def _manual_means(x: torch.Tensor, t: torch.Tensor, end: float, width: float):
    """Mean activation per slice [k*width, (k+1)*width) of positions before the clip's end."""
    out = []
    k = 0
    while k * width < end - 1e-9:
        sel = (t >= k * width - 1e-9) & (t < (k + 1) * width - 1e-9) & (t < end - 1e-9)
        out.append((k, int(sel.sum()), x[:, sel].mean(1)))
        k += 1
    return out


def test_direction_readout_is_mean_projection_per_second(model, clips, acts):
    x, t = acts
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    df = per_second(model, clips, PROMPTS, H, v)
    assert list(df.columns) == ["clip", "second", "t0", "t1", "n_steps", "value"]
    proj = x @ v.double()  # [2, S]
    expected = []
    for clip in range(2):
        for k in range(3):
            sel = (t >= k) & (t < k + 1)  # steps 30..32 lie at 3.0-3.2 s: after the clip's end
            expected.append((clip, k, int(sel.sum()), float(proj[clip, sel].mean())))
    got = list(zip(df["clip"], df["second"], df["n_steps"], df["value"]))
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    assert all(n == 10 for _, _, n, _ in expected)
    np.testing.assert_allclose([g[3] for g in got], [e[3] for e in expected], rtol=1e-5, atol=1e-5)


def test_half_second_slices_and_unnormalised_direction(model, clips, acts):
    x, t = acts
    v = 7.0 * torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    df = per_second(model, clips, PROMPTS, H, v.numpy(), seconds=0.5)
    assert len(df) == 2 * 6 and df.t1.max() == 3.0
    unit = v.double() / v.double().norm()
    for k, n, mean in _manual_means(x, t, 3.0, 0.5):
        rows = df[df.second == k]
        assert rows.n_steps.tolist() == [n, n]
        np.testing.assert_allclose(rows.value.to_numpy(), (mean @ unit).numpy(), rtol=1e-5, atol=1e-5)


def test_partial_last_slice_ends_at_the_clip(model, clips, acts):
    x, t = acts
    codes = clips[:, :, :25]  # 2.5 s
    v = torch.ones(model.d_model)
    df = per_second(model, codes, PROMPTS, H, v)
    last = df[df.second == 2]
    assert last.t1.tolist() == [2.5, 2.5] and last.n_steps.tolist() == [5, 5]
    # teacher forcing is causal: the first 25 frames' activations equal the longer run's
    proj = (x @ (v.double() / v.double().norm()))[:, (t >= 2) & (t < 2.5)].mean(1)
    np.testing.assert_allclose(last.value.to_numpy(), proj.numpy(), rtol=1e-5, atol=1e-5)


def test_probe_callable_gets_pooled_seconds(model, clips, acts):
    from sklearn.linear_model import LogisticRegression
    x, t = acts
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, model.d_model))
    labels = np.where(feats[:, 0] + feats[:, 1] > 0, "jazz", "rock")
    clf = LogisticRegression(max_iter=500).fit(feats, labels)
    df = per_second(model, clips, PROMPTS, H, lambda f: clf.predict_proba(f.numpy()))
    assert list(df.columns) == ["clip", "second", "t0", "t1", "n_steps", "p0", "p1", "label"]
    means = _manual_means(x, t, 3.0, 1.0)
    pooled = np.stack([m[2][clip].numpy() for clip in range(2) for m in means])
    want = clf.predict_proba(pooled.astype(np.float32))
    np.testing.assert_allclose(df[["p0", "p1"]].to_numpy(), want, rtol=1e-4, atol=1e-5)
    assert df.label.tolist() == [["p0", "p1"][i] for i in want.argmax(1)]
    # a bound predict_proba names the columns after the classifier's classes
    named = per_second(model, clips, PROMPTS, H, _Proba(clf))
    assert list(named.columns[5:]) == ["jazz", "rock", "label"]
    assert named.label.tolist() == [clf.classes_[i] for i in want.argmax(1)]


class _Proba:
    """A probe wrapper with class names, as a fitted probe would expose them."""

    def __init__(self, clf):
        self.clf, self.classes = clf, list(clf.classes_)

    def __call__(self, f: torch.Tensor) -> pd.DataFrame:
        return pd.DataFrame(self.clf.predict_proba(f.numpy()), columns=self.classes)


def test_clips_read_alone_equal_clips_read_in_a_batch(model, clips):
    class Dir:  # anything with a .vector [D], like mstools.analysis.directions.Direction
        vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))

    both = per_second(model, clips, PROMPTS, H, Dir())
    alone = per_second(model, clips[1:], PROMPTS[1], H, Dir())
    np.testing.assert_allclose(both[both["clip"] == 1].value.to_numpy(), alone.value.to_numpy(),
                               rtol=1e-5, atol=1e-5)


def test_time_comes_from_cache_seconds_not_the_index(model, clips):
    """A cache whose positions start 1 s later (a continuation) shifts every slice by one."""

    class Shifted:
        def __init__(self, m):
            self.m = m

        def __getattr__(self, name):
            return getattr(self.m, name)

        def run_with_cache(self, codes, prompts, names_filter=None):
            logits, cache = self.m.run_with_cache(codes, prompts, names_filter=names_filter)
            cache.steps = cache.steps + int(self.m.frame_rate)
            return logits, cache

    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    plain = per_second(model, clips, PROMPTS, H, v)
    shifted = per_second(Shifted(model), clips, PROMPTS, H, v)
    # slice k of the shifted cache holds the positions of slice k-1; the last one runs past the end
    assert shifted.second.unique().tolist() == [1, 2]
    np.testing.assert_allclose(shifted.value.to_numpy(),
                               plain[plain.second < 2].value.to_numpy(), rtol=1e-6)


def test_second_index_boundaries():
    t = torch.tensor([0.0, 0.4999, 0.5, 1.0, 1.7], dtype=torch.float64)
    assert second_index(t, 0.5).tolist() == [0, 0, 1, 2, 3]
    # 0.7 / 0.1 is 6.999999999999999 in floating point: a step at 0.7 s still starts slice 7
    assert (0.7 // 0.1) == 6.0 and second_index(torch.tensor([0.7], dtype=torch.float64), 0.1).tolist() == [7]


def test_clear_errors(model, clips):
    with pytest.raises(ValueError, match=f"{model.d_model} features"):
        per_second(model, clips, PROMPTS, H, torch.ones(5))
    with pytest.raises(ValueError, match="all zeros"):
        per_second(model, clips, PROMPTS, H, torch.zeros(model.d_model))
    with pytest.raises(ValueError, match="seconds must be a positive"):
        per_second(model, clips, PROMPTS, H, torch.ones(model.d_model), seconds=0)
    with pytest.raises(ValueError, match="one row per input row"):
        per_second(model, clips, PROMPTS, H, lambda f: np.zeros((1, 2)))
    with pytest.raises(ValueError, match="one per clip"):
        per_second(model, clips, PROMPTS[:1], H, torch.ones(model.d_model))
