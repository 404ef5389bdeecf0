"""Steering findings on the testbed: directions against independent references, the quick run, and
a falsifiable check that the best setting beats its random control."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import mstools
from mstools.testbed import findings
from mstools.testbed.music import GENRES, VOCABULARY


@pytest.fixture(scope="module")
def model():
    return mstools.load_musicgen("testbed")


@pytest.fixture(scope="module")
def quick(model):
    return findings.run_all(model, quick=True)


def test_diff_means_direction_matches_manual_class_means(model):
    hook = "blocks.1.hook_resid_post"
    vec = findings.genre_directions(model, "jazz", hook, methods=("diff_means",), n_clips=64)["diff_means"]
    clips = mstools.testbed.make_dataset(64, 60, seed=101)
    codes = torch.stack([c.codes for c in clips])
    _, cache = model.run_with_cache(codes, [c.prompt for c in clips], names_filter=[hook])
    pooled = cache[hook].float().mean(1)[:48]                          # the 75 % training split
    jazz = torch.tensor([c.labels["genre"] == "jazz" for c in clips[:48]])
    manual = pooled[jazz].mean(0) - pooled[~jazz].mean(0)
    torch.testing.assert_close(vec[hook], manual / manual.norm(), atol=1e-5, rtol=1e-4)
    assert vec.units == "unit" and vec.fingerprint == model.fingerprint


def test_ridge_direction_matches_sklearn_and_probes_read_instrument(model):
    from sklearn.linear_model import Ridge
    hook = "blocks.2.hook_resid_post"
    vecs = findings.factor_directions(model, "instrument", "brass", hook, n_clips=256)
    X, labels = findings.pooled_features(model, [hook], n_clips=256)
    x = X[hook].double().numpy()[:192]
    mu, sd = x.mean(0), x.std(0, ddof=1) + 1e-6
    y = labels["instrument"].to_numpy()[:192]
    classes = sorted(set(y))
    Y = np.stack([y == c for c in classes], 1).astype(float)
    ref = Ridge(alpha=192.0).fit((x - mu) / sd, Y).coef_[classes.index("brass")] / sd
    ours = vecs["ridge"][hook].double().numpy()
    assert float(ours @ ref / np.linalg.norm(ref)) == pytest.approx(1.0, abs=1e-4)
    # instrument is a token-level factor: every read-out finds it on held-out clips
    for v in vecs.values():
        assert v.meta["probe_accuracy"] > 0.9


def test_source_prompts_name_what_they_say():
    other = findings.source_prompts("other", "jazz", 32)
    assert all(p is not None and not set(p.split()) & set(GENRES) for p in other)
    assert all(set(p.split()) <= set(VOCABULARY) for p in other)
    assert findings.source_prompts("genre", "jazz", 3) == ["rock"] * 3
    assert findings.source_prompts("uncond", "jazz", 2) == [None, None]
    assert findings._prompted("fast music with piano", "jazz") == "fast jazz with piano"
    with pytest.raises(ValueError, match="unknown source"):
        findings.source_prompts("melody", "jazz", 2)


def test_summarize_against_hand_computed_numbers():
    rows = []
    def add(control, arm, successes, loglik):
        for i, s in enumerate(successes):
            rows.append(dict(experiment="e", arm=arm, control=control, source="uncond", segment=0, seed=0,
                             clip=i, hook="h", alpha=0.5, branch="both", schedule="constant", method="m",
                             layer=1, genre="jazz" if s else "rock", tempo="fast", instrument="piano",
                             dynamics="soft", loglik=loglik, target_genre="jazz",
                             hit_genre=bool(s), success=bool(s)))
    add("none", "steer", [1, 1, 1, 0], -1.5)
    add("random", "rnd", [0, 1, 0, 0], -1.0)
    add("unsteered", "unsteered", [0, 0, 1, 0], -1.0)
    add("prompted", "prompted", [1, 1, 1, 1], -1.2)
    s = findings.summarize(pd.DataFrame(rows)).set_index("control")
    st = s.loc["none"]
    assert st.success == 0.75 and st.n == 4
    assert st.moved == pytest.approx(0.5) and st.random_moved == pytest.approx(0.0)
    assert st.ll_drop == pytest.approx(0.5) and st.ll_drop_prompted == pytest.approx(0.2)
    # 95 % Wilson interval of 3/4 (closed form)
    z, p, n = 1.96, 0.75, 4
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (st.success_lo, st.success_hi) == pytest.approx((centre - half, centre + half))
    assert not st.aim                     # success < 0.8 and ll_drop 0.5 > 2 * 0.2


def test_quick_run_columns_and_experiments(quick):
    expected = {"experiment", "arm", "control", "source", "seed", "clip", "segment", "genre", "tempo",
                "instrument", "dynamics", "loglik", "target_genre", "hit_genre", "success", "method",
                "hook", "layer", "alpha", "branch", "schedule"}
    assert expected <= set(quick.columns)
    assert set(quick.experiment) == {"methods", "hooks", "branch", "window", "fusion", "timbre"}
    assert {"none", "random", "unsteered", "prompted"} <= set(quick.control)
    assert set(quick.source.dropna()) >= {"uncond", "other", "genre"}
    md = findings.to_markdown(quick)
    assert md.count("\n## ") >= 7 and "| arm | control |" in md


def test_best_setting_beats_its_random_control(quick):
    s = findings.summarize(quick)
    steered = s[(s.experiment == "methods") & (s.control == "none")]
    best = steered.sort_values("success", ascending=False).iloc[0]
    # falsifiable: the lower end of the best setting's 95 % interval lies above the random control
    assert best.success_lo > best.random_success
    assert best.moved > 0


def test_window_leaves_frames_before_t0_bit_identical(quick):
    w = quick[quick.experiment == "window"]
    assert len(w) and w["identical_before"].astype(bool).all()
    steered = w[w.control == "none"]
    changed = steered["first_diff_s"].dropna()
    assert len(changed) and (changed >= 3.0 - 0.3 - 1e-9).all()   # delay pattern: 3 frames early at most


def test_write_findings_round_trip(quick, tmp_path):
    jpath, mpath = findings.write_findings(quick, tmp_path)
    import json
    payload = json.loads(jpath.read_text())
    assert payload["best"]["layer"] in range(8) and len(payload["rows"]) == len(quick)
    assert mpath.read_text().startswith("# Steering findings")
