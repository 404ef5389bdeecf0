"""The patching and sparse-feature findings (experiments/patching_sae.py) at quick size, checked against
what the testbed is known to do and against references computed here without the script's path
(plain forward passes, the clips' own labels, scikit-learn's AUROC), and the README blocks quote
the results file."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import plain_logits

import mstools
from mstools.analysis.patching import clean_logprob
from mstools.data.sources import testbed_clips
from mstools.testbed import GENRES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import patching_sae  # noqa: E402
import readme_figures  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    return {"trained": mstools.load_musicgen("testbed"),
            "untrained": mstools.load_musicgen("testbed-untrained", seed=0)}


@pytest.fixture(scope="module")
def result(models):
    return patching_sae.run_all(models["trained"], models["untrained"], quick=True, log=lambda s: None)


def test_the_results_are_json_and_complete(result):
    text = json.dumps(result, allow_nan=False)     # None where a number is undefined, never NaN
    back = json.loads(text)
    p, f = back["patching"], back["features"]
    assert len(p["layers"]) == 8 and len(p["pairs"]) == len(patching_sae.PAIRS)
    assert {(x["factor"], x["value"]) for x in f["factors"]} >= {("genre", g) for g in GENRES}
    assert {s["direction"] for s in f["steering"]} == {"SAE latent", "logistic probe"}


def test_patching_matches_plain_forward_passes(models, result):
    """The clean and corrupted scores are those of plain forward passes; the last layer's residual
    stream (all the output heads read) restores the clean run exactly; the first layer, whose
    self-attention reads the same codes in both runs, differs only by what its cross-attention
    read, so patching that output equals patching the whole residual stream."""
    model, p = models["trained"], result["patching"]
    codes = patching_sae.genre_clips(model, p["clean"], p["clips"])
    assert all(c == p["clean"] for c in [it.labels["genre"] for it in _items_of(codes)])
    lp = {w: float(clean_logprob(model, plain_logits(model, codes, [w] * len(codes)), codes).mean())
          for w in (p["clean"], p["corrupted"])}
    assert p["logprob_clean"] == pytest.approx(lp[p["clean"]], abs=1e-5)
    assert p["logprob_corrupted"] == pytest.approx(lp[p["corrupted"]], abs=1e-5)
    layers = p["layers"]
    assert layers[-1]["resid_post"] == pytest.approx(1.0, abs=1e-6)
    assert layers[0]["resid_post"] == pytest.approx(layers[0]["cross_attn_out"], abs=1e-6)
    first = p["finding"]["earliest_layer"]
    assert first is not None and layers[first]["resid_post"] >= 0.5
    assert all(x["resid_post"] < 0.5 for x in layers[:first])
    # the windows tile the clip, so the first window's cell is the grid's
    grid = [g for g in p["grid"] if g["layer"] == first]
    assert p["finding"]["first_window_share"] == pytest.approx(grid[0]["metric"] / layers[first]["resid_post"])


def _items_of(codes):
    """The procedural clips behind ``genre_clips`` codes (same draw, matched by codes)."""
    from mstools.testbed import make_dataset
    clips = make_dataset(8 * len(codes), 60, seed=3)
    return [next(c for c in clips if torch.equal(c.codes, x)) for x in codes]


def test_generative_patching_reflects_the_testbed_following_its_prompt(result):
    """The trained testbed follows a genre-only prompt (README: 0.97), so the clean run plays the
    clean genre and the corrupted run does not."""
    g = result["patching"]["generative"]
    assert g["hit_clean"] >= 0.75 and g["hit_corrupted"] <= 0.25


def test_trained_latents_detect_genre_better_than_untrained(result):
    rows = {x["value"]: x for x in result["features"]["factors"] if x["factor"] == "genre"}
    assert set(rows) == set(GENRES)
    for g, x in rows.items():
        assert x["trained_auroc"] > x["untrained_auroc"], g
    assert np.mean([x["trained_auroc"] for x in rows.values()]) > 0.9
    q = result["features"]["models"]
    assert q["trained"]["l0"] == pytest.approx(result["config"]["k"])
    assert 0 <= q["trained"]["fvu"] < 1 and q["trained"]["mean_ablation_cost"] > q["trained"]["splice_cost"]


def test_best_genre_latent_auroc_from_the_clips_own_labels(models, result, tmp_path):
    """Recompute the best jazz latent's AUROC without the store's labels or the library's AUROC:
    the SAE (retrained: same seed, same SAE) reads the held-out clips' residual stream from a plain
    cached forward pass at the steps that complete each frame; clip means against the clips' own
    genre labels, scored by scikit-learn."""
    cfg = patching_sae.Config.make(True)
    trained, _, _, n_train = patching_sae.train_saes(models, cfg, str(tmp_path))
    model, sae = models["trained"], trained["trained"]
    items = list(testbed_clips(cfg.sae_clips, 6.0, seed=0))[n_train // 60:]
    codes = torch.stack([it.codes for it in items])
    _, cache = model.run_with_cache(codes, [it.prompt for it in items], names_filter=[sae.hook])
    k = model.num_codebooks
    frames = cache[sae.hook][:, k - 1:k - 1 + codes.shape[-1]].float()     # frame f completes at step f + K - 1
    pooled = sae.encode(frames).mean(1)
    row = next(x for x in result["features"]["factors"] if (x["factor"], x["value"]) == ("genre", "jazz"))
    y = np.array([it.labels["genre"] == "jazz" for it in items])
    auc = roc_auc_score(y, pooled[:, row["trained_feature"]].numpy())
    assert auc == pytest.approx(row["trained_auroc"], abs=0.02)
    best = max(roc_auc_score(y, pooled[:, j].numpy()) for j in range(sae.width))
    assert best == pytest.approx(row["trained_auroc"], abs=0.02)


# ----------------------------------------------------------------------------------- README blocks
def _synthetic() -> dict:
    layers = [dict(layer=l, resid_post=[0.01, 0.3, 0.62][l], cross_attn_out=[0.01, 0.2, 0.4][l],
                   first_window=[0.01, 0.29, 0.6][l], later_max=[0.0, 0.01, 0.03][l], generative=[0.25, 0.5, 1.0][l],
                   generative_hit=0.5, probe_accuracy=[0.55, 0.9, 1.0][l], steering_success=[0.2, 0.7, 0.4][l])
              for l in range(3)]
    patching = dict(clean="jazz", corrupted="rock", clips=7, window=0.5, duration=6.3, logprob_clean=-0.25,
                    logprob_corrupted=-0.5, level=0.5, layers=layers,
                    pairs=[dict(clean="jazz", corrupted="rock", earliest_layer=2),
                           dict(clean="rock", corrupted="jazz", earliest_layer=None)],
                    grid=[], generative=dict(first=2.0, clips=5, hit_clean=0.875, hit_corrupted=0.125),
                    probe_clips=64, steer_prompts=3, steering_base_rate=0.3125,
                    finding=dict(earliest_layer=2, earliest_layer_generative=1, first_window_share=0.6 / 0.62,
                                 top_window=dict(layer=2, t0=0.0, t1=0.5, metric=0.6), cross_attn_sum=0.61,
                                 best_cross_attn_layer=2, best_probe_layer=2, best_steering_layer=1))
    model = dict(fvu=0.123, fve=0.877, l0=16.0, dead=5, dead_frac=5 / 384, loglik_unchanged=-0.8,
                 loglik_spliced=-1.1, loglik_mean_ablation=-9.0, splice_cost=0.3, mean_ablation_cost=8.2)
    factors = [dict(factor="genre", value=g, trained_feature=i, trained_auroc=0.991 - i / 100,
                    trained_frame_auroc=0.6, trained_needed=[2.0, 4.0, None, 8.0][i],
                    untrained_feature=10 + i, untrained_auroc=0.801 + i / 100, untrained_frame_auroc=0.5,
                    untrained_needed=None) for i, g in enumerate(GENRES)]
    steering = [dict(target="jazz", direction=d, feature=3, cosine=0.125, success=s, success_lo=0.1,
                     success_hi=0.9, base_rate=0.25, random_mean=0.2, random_max=0.375, ll_drop=0.05)
                for d, s in (("SAE latent", 0.3125), ("logistic probe", 0.8125))]
    features = dict(layer=3, hook="blocks.3.hook_resid_post", width=384, k=16, epochs=2, clips=100,
                    train_rows=4800, heldout_clips=20, level=0.95, max_k=128, splice_prompts=4,
                    models={"trained": model, "untrained": {**model, "fvu": 0.456, "dead": 40}},
                    factors=factors, steer_prompts=3, draws=8, steering=steering)
    return dict(model="testbed", backend="audiocraft", quick=True, seconds=90.0, patching=patching,
                features=features)


def test_blocks_quote_the_results_file(tmp_path, monkeypatch):
    monkeypatch.setattr(readme_figures, "RESULTS", tmp_path)
    assert readme_figures.render_patching().startswith("(no results yet: run")
    assert readme_figures.render_features().startswith("(no results yet: run")
    r = _synthetic()
    (tmp_path / "patching_sae.json").write_text(json.dumps(r))
    block = readme_figures.render_patching()
    assert "| 2 | **0.62** | 0.60 | 0.030 | 0.40 | 1.00 | 1.00 | 0.40 |" in block
    assert "| 1 | **0.30** | 0.29 | 0.010 | 0.20 | 0.50 | 0.90 | 0.70 |" in block
    assert "(1.5 min, quick mode" in block and "-0.250 vs -0.500 nats per token" in block
    assert "from layer 2 on" in block and f"In time it is the first 0.5 s: that window alone restores {0.6 / 0.62:.0%}" in block
    assert "no later window of any layer more than 0.030 (once" in block
    assert "gives 0.25 to 1.00 (at least 0.5 from layer 1 on)" in block
    assert "jazz vs rock: layer 2; rock vs jazz: none" in block
    assert "0.88 of the clean run's clips and 0.12 of the corrupted run's" in block
    assert "steering succeeds most at layer 1 (0.70)" in block
    block = readme_figures.render_features()
    assert "| trained | 0.123 | 16 | 5 of 384 | -0.80 -> -1.10 (0.30) | 8.20 |" in block
    assert "| untrained | 0.456 | 16 | 40 of 384 |" in block
    assert "| genre = jazz | **0.981** (0.600) | 0.811 (0.500) | 4 | > 128 |" in block
    assert "| genre = classical | **0.971** (0.600) | 0.821 (0.500) | > 128 | > 128 |" in block
    aucs = [x["trained_auroc"] for x in r["features"]["factors"]]
    assert f"AUROC of {min(aucs):.3f} to {max(aucs):.3f}, against 0.801 to 0.831" in block
    assert "on 3 of 4 genres (trained) and 0 (untrained)" in block
    assert "| jazz | SAE latent 3 | **0.31** | 0.25 | 0.20 (0.38) | 0.05 | 0.12 |" in block
    assert "| jazz | logistic probe | **0.81** |" in block
    assert "12.3% of the variance unexplained (45.6% in the untrained model)" in block
    assert "succeeds 0.31 on average over 1 target(s), the logistic probe's direction 0.81; above every " \
           "random draw for 0 and 1 of them" in block
