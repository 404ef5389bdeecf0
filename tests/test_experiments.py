"""The findings script, composed from the library: its directions equal independent references, its
quick run covers every experiment, and its choice of the best setting follows the summary."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mstools
from mstools.testbed import GENRES, make_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import findings  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return mstools.load_musicgen("testbed")


@pytest.fixture(scope="module")
def directions(model):
    return findings.Directions(model, n_clips=96)


def test_diff_means_direction_matches_manual_class_means(model, directions):
    hook = "blocks.1.hook_resid_post"
    vec = directions.vector(hook, "genre", "jazz", "diff_means")
    clips = make_dataset(96, 60, seed=101)  # testbed_clips(96, 6.0, seed=101)
    codes = torch.stack([c.codes for c in clips])
    _, cache = model.run_with_cache(codes, [c.prompt for c in clips], names_filter=[hook])
    pooled = cache[hook].float().mean(1)
    genre = [c.labels["genre"] for c in clips]
    mean = {g: pooled[torch.tensor([x == g for x in genre])].mean(0) for g in GENRES}
    manual = mean["jazz"] - torch.stack([mean[g] for g in GENRES if g != "jazz"]).mean(0)  # balanced
    torch.testing.assert_close(vec[hook], manual / manual.norm(), atol=1e-5, rtol=1e-4)
    assert vec.units == "unit" and vec.fingerprint == model.fingerprint


def test_ridge_direction_matches_sklearn_with_the_chosen_penalty(directions):
    from sklearn.linear_model import Ridge
    hook = "blocks.2.hook_resid_post"
    vec = directions.vector(hook, "instrument", "brass", "ridge")
    X, labels = directions.features(hook)
    probe = directions._probes[(hook, "instrument", "ridge")]
    x = X.double().numpy()
    mu, sd = x.mean(0), x.std(0)
    y = labels["instrument"].to_numpy()
    classes = sorted(set(y))
    Y = np.stack([y == c for c in classes], 1).astype(float)
    ref = Ridge(alpha=probe.meta["alpha"]).fit((x - mu) / sd, Y).coef_[classes.index("brass")] / sd
    ours = vec[hook].double().numpy()
    assert float(ours @ ref / np.linalg.norm(ref)) == pytest.approx(1.0, abs=1e-4)


def test_source_prompts_name_what_they_say():
    other = findings.source_prompts("other", "jazz", 32)
    assert all(p is not None and not set(p.split()) & set(GENRES) for p in other)
    assert findings.source_prompts("genre", "jazz", 3) == ["rock"] * 3
    assert findings.source_prompts("uncond", "jazz", 2) == [None, None]


def test_best_setting_is_the_best_mean_that_beats_random():
    s = pd.DataFrame({"method": ["a", "a", "b", "b", "c"], "layer": [1, 1, 2, 2, 0],
                      "success": [0.9, 0.7, 0.95, 0.5, 1.0], "beats_random": [True, True, True, True, False]})
    assert findings.best_setting(s) == ("a", 1)  # c is best but never beats its random control


def test_quick_run_covers_every_experiment(model, tmp_path):
    summary = findings.run_all(model, quick=True, log=lambda m: None)
    assert list(summary["experiment"].unique()) == ["methods", "hooks", "branch", "window", "fusion",
                                                    "timbre", "prompted"]
    assert (summary["random_draws"] == 8).all()
    window = summary[summary.experiment == "window"]
    assert (window[window.segment == 0]["identical"] == 1.0).all()  # nothing before the window moves
    fusion = summary[(summary.experiment == "fusion") & summary.trial.str.startswith("audio")]
    assert (fusion[fusion.segment == 0]["identical"] == 1.0).all()  # the audio prompt is kept
    md = findings.to_markdown(summary)
    for exp in summary["experiment"].unique():
        assert f"## {exp}" in md
    best = summary.attrs["best"]
    methods = summary[summary.experiment == "methods"]
    assert (best["method"], best["layer"]) == findings.best_setting(methods)
