"""The instrument (mstools.evaluation) on the testbed: pairing, controls, and every summary number
recomputed by hand from the clip table and from the grammar."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import library_special_token, load_testbed, plain_logits

from mstools import evaluation
from mstools.steering import Steering, SteeringVector, window
from mstools.testbed import score

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return load_testbed("audiocraft")


def _vec(model, seed: int) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({HOOK: torch.randn(model.d_model, generator=g)}, model.fingerprint,
                          source=f"rand{seed}", units="raw")


@pytest.fixture(scope="module")
def run(model):
    """Two trials toward different genres with the same hook and strength (so they share their
    random draws), a zero-strength trial, segments before/after a window, a prompted swap."""
    trials = [
        evaluation.Trial("to jazz", Steering(_vec(model, 0), 0.8, branch="both"), {"genre": "jazz"}),
        evaluation.Trial("to rock", Steering(_vec(model, 1), 0.8, branch="both"), {"genre": "rock"},
                         prompted=evaluation.swap_words({"classical": "rock"})),
        evaluation.Trial("nothing", Steering(_vec(model, 2), 0.0, schedule=window(2.0, None), branch="both"),
                         {"genre": "jazz"}),
    ]
    prompts = [None, "classical", "fast classical with piano", None]
    table = evaluation.steering(model, trials, prompts, seeds=[0, 1], duration=4.0, random_draws=3,
                                segments=[(0.0, 1.6), (2.0, 4.0)])
    return trials, prompts, table


def test_table_has_every_arm_paired(run):
    trials, prompts, table = run
    assert set(table["control"]) == {"unsteered", "none", "random", "prompted"}
    n = len(prompts) * 2 * 2  # prompts x seeds x segments
    assert (table["control"] == "unsteered").sum() == n
    for t in trials:
        mine = table[table.trial == t.name]
        assert (mine.control == "none").sum() == n and (mine.control == "prompted").sum() == n
        assert sorted(mine[mine.control == "random"]["draw"].unique()) == [0, 1, 2]
    # the pairing key covers every clip once per arm and segment
    keys = table[table.control == "none"].groupby(["trial", "seed", "clip", "segment"]).size()
    assert (keys == 1).all()


def test_zero_strength_gives_the_unsteered_twin_exactly(run):
    _, _, table = run
    plain = table[table.control == "unsteered"].set_index(["seed", "clip", "segment"])
    zero = table[(table.trial == "nothing") & (table.control == "none")].set_index(["seed", "clip", "segment"])
    assert np.isinf(zero["first_diff_s"]).all()
    cols = ["genre", "tempo", "instrument", "dynamics", "loglik"]
    pd.testing.assert_frame_equal(zero[cols], plain.loc[zero.index, cols])
    s = evaluation.summarize(table).set_index(["trial", "segment"])
    assert s.loc[("nothing", 0), "moved"] == 0 and s.loc[("nothing", 1), "ll_drop"] == 0
    assert s.loc[("nothing", 0), "identical"] == 1.0


def test_random_draws_are_shared_by_trials_that_differ_only_in_direction(run):
    _, _, table = run
    r = table[table.control == "random"]
    jazz = r[r.trial == "to jazz"].set_index(["draw", "seed", "clip", "segment"]).sort_index()
    rock = r[r.trial == "to rock"].set_index(["draw", "seed", "clip", "segment"]).sort_index()
    assert jazz.index.equals(rock.index)
    assert (jazz["genre"] == rock["genre"]).all() and (jazz["loglik"] == rock["loglik"]).all()
    assert (jazz["success"] == (jazz["genre"] == "jazz")).all()
    assert (rock["success"] == (rock["genre"] == "rock")).all()
    nothing = r[r.trial == "nothing"]  # strength 0 and a window: other draws
    assert len(nothing) and np.isinf(nothing["first_diff_s"]).all()


def test_summary_numbers_recomputed_by_hand(run):
    _, _, table = run
    s = evaluation.summarize(table).set_index(["trial", "segment"])
    plain = table[table.control == "unsteered"].set_index(["seed", "clip", "segment"])
    for (trial, seg), row in s.iterrows():
        want = {"to jazz": "jazz", "to rock": "rock", "nothing": "jazz"}[trial]
        mine = table[(table.trial == trial) & (table.segment == seg)]
        st = mine[mine.control == "none"].set_index(["seed", "clip", "segment"])
        twin = plain.loc[st.index]
        hit = (st["genre"] == want).to_numpy()
        base = (twin["genre"] == want).to_numpy()
        assert row["n"] == len(st)
        assert row["success"] == pytest.approx(hit.mean())
        assert (row["success_lo"], row["success_hi"]) == pytest.approx(evaluation.wilson(hit.sum(), len(hit)))
        assert row["base_rate"] == pytest.approx(base.mean())
        assert row["moved"] == pytest.approx(hit.mean() - base.mean())
        d = hit.astype(float) - base
        half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
        if half > 0:
            assert row["moved_lo"] == pytest.approx(max(-1, d.mean() - half))
        draws = [(g["genre"] == want).mean() for _, g in mine[mine.control == "random"].groupby("draw")]
        assert row["random_draws"] == 3
        assert row["random_mean"] == pytest.approx(np.mean(draws))
        assert row["random_max"] == pytest.approx(max(draws)) and row["random_min"] == pytest.approx(min(draws))
        assert row["random_sd"] == pytest.approx(np.std(draws, ddof=1))
        assert row["beats_random"] == (row["success"] > max(draws))
        pr = mine[mine.control == "prompted"]
        assert row["prompted"] == pytest.approx((pr["genre"] == want).mean())
        assert row["ll_drop"] == pytest.approx((twin["loglik"].to_numpy() - st["loglik"].to_numpy()).mean())
        for f in ("tempo", "instrument", "dynamics"):
            assert row[f"kept_{f}"] == pytest.approx((st[f].to_numpy() == twin[f].to_numpy()).mean())
        assert "kept_genre" not in row or math.isnan(row["kept_genre"])


def test_scores_are_the_grammars_and_prompts_follow_the_trials(model, run):
    trials, prompts, table = run
    # regenerate one arm independently: paired sampling makes a separate call give the same codes
    out = model.generate(trials[1].prompts_for(prompts), 4.0, seed=1, decode=False,
                         noise_ids=list(range(len(prompts))))
    want = score(out.codes[..., 20:40])  # segment 1: 2-4 s at 10 frames/s
    got = table[(table.trial == "to rock") & (table.control == "prompted") & (table.seed == 1)
                & (table.segment == 1)].sort_values("clip")
    assert got["genre"].tolist() == want["genre"].tolist()
    assert got["loglik"].to_numpy() == pytest.approx(want["loglik"].to_numpy())
    assert got["prompt"].tolist() == ["rock", "rock", "fast rock with piano", "rock"]
    jazz = table[(table.trial == "to jazz") & (table.control == "prompted")]
    assert set(jazz["prompt"]) == {"jazz"}  # the default prompted control: the target's labels


def test_steering_before_a_window_leaves_the_clip_identical(model):
    """A window from 2 s: every frame before 2 s - (K - 1) / frame_rate is its twin's (delay
    pattern: steering at step s reaches codebook k of frame s - k), later ones differ."""
    trial = evaluation.Trial("late", Steering(_vec(model, 5), 2.0, schedule=window(2.0, None), branch="both"),
                             {"genre": "jazz"})
    table = evaluation.steering(model, [trial], [None] * 6, seeds=[0], duration=4.0, random_draws=1,
                                controls=("unsteered", "random"), segments=[(0.0, 1.7), (2.0, 4.0)])
    s = evaluation.summarize(table).set_index("segment")
    assert s.loc[0, "identical"] == 1.0 and s.loc[1, "identical"] < 1.0
    st = table[(table.control == "none") & (table.segment == 0)]
    assert (st["first_diff_s"] >= 1.7).all()


def test_several_steerings_in_one_trial_act_together(model):
    a, b = _vec(model, 6), _vec(model, 7)
    raw = dict(branch="both", units="raw")
    both = evaluation.Trial("a+b", [Steering(a, 0.5, **raw), Steering(b, 0.5, **raw)], {"genre": "jazz"})
    summed = evaluation.Trial("sum", Steering(a + b, 0.5, **raw), {"genre": "jazz"})
    table = evaluation.steering(model, [both, summed], [None] * 3, seeds=[0], duration=2.0,
                                controls=("unsteered",))
    x = table[table.trial == "a+b"].sort_values("clip")
    y = table[table.trial == "sum"].sort_values("clip")
    # adding a and b in one hook equals adding a + b (raw units: the add operator is linear)
    assert x["genre"].tolist() == y["genre"].tolist() and x["loglik"].tolist() == y["loglik"].tolist()
    assert np.isfinite(x["first_diff_s"]).any()


def test_clear_errors(model):
    t = evaluation.Trial("t", Steering(_vec(model, 0), 1.0), {"genre": "jazz"})
    with pytest.raises(ValueError, match="distinct"):
        evaluation.steering(model, [t, t], [None])
    with pytest.raises(ValueError, match="does not read"):
        evaluation.steering(model, [evaluation.Trial("x", Steering(_vec(model, 0), 1.0), {"mood": "sad"})],
                            [None], duration=1.0, controls=("unsteered",))
    with pytest.raises(ValueError, match="no scorer"):
        evaluation.steering(model, [t], [None], scorer=None) if model.scorer is None else None
        no_scorer = type("M", (), {"scorer": None, "model_name": "x"})()
        evaluation.steering(no_scorer, [t], [None])
    with pytest.raises(ValueError, match="unknown controls"):
        evaluation.steering(model, [t], [None], controls=("placebo",))
    with pytest.raises(ValueError, match="one per source prompt"):
        evaluation.Trial("p", Steering(_vec(model, 0), 1.0), {"genre": "jazz"}, prompted=["a"]).prompts_for([None, None])
    with pytest.raises(ValueError, match="no target"):
        evaluation.Trial("p", Steering(_vec(model, 0), 1.0), {})


def test_swap_words():
    f = evaluation.swap_words({"soft": "loud", "Rock": "jazz"})
    assert f("soft rock with piano") == "loud jazz with piano"
    assert f("softly") == "loud jazz"  # no whole-word match: the fallback
    assert f(None) == "loud jazz"


def test_random_like_keeps_norms():
    v = SteeringVector({"a": torch.tensor([3.0, 4.0]), "b": torch.ones(3)}, "fp", source="x")
    r = evaluation.random_like(v, seed=1)
    for h in v.hooks:
        assert math.isclose(float(r[h].norm()), float(v[h].norm()), rel_tol=1e-6)
        assert not torch.allclose(r[h], v[h])


def test_wilson_matches_formula():
    lo, hi = evaluation.wilson(8, 10)
    p, n, z = 0.8, 10, 1.96
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert math.isclose(lo, c - w) and math.isclose(hi, c + w)
    assert evaluation.wilson(0, 10)[0] == 0.0


def test_intervals_stay_in_range():
    m, lo, hi = evaluation.mean_interval([0.9, 1.0, 1.0, 0.95], bounds=(0, 1))
    assert hi == 1.0 and lo < m
    m, lo, hi = evaluation.paired_difference([1, 1, 1], [0, 0, 0])
    assert (m, lo, hi) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("backend", ["audiocraft", "transformers"])
def test_nll_matches_manual_cross_entropy(backend):
    model = load_testbed(backend)
    out = model.generate(["rock", "jazz"], 2.0, seed=0, decode=False)
    got = evaluation.nll(model, out.codes, ["rock", "jazz"])
    seq = model.to_sequence(out.codes)
    logits = plain_logits(model, out.codes, ["rock", "jazz"])
    special = library_special_token(model)
    for b in range(2):
        total, count = 0.0, 0
        for k in range(model.num_codebooks):
            for s in range(seq.shape[-1] - 1):
                t = int(seq[b, k, s + 1])
                if t == special:
                    continue
                total -= float(torch.log_softmax(logits[b, k, s], -1)[t])
                count += 1
        assert math.isclose(float(got[b]), total / count, rel_tol=1e-4)


def test_label_shares_sum_to_one(run):
    _, _, table = run
    shares = evaluation.label_shares(table, "genre")
    assert np.allclose(shares.sum(axis=1), 1.0)


def test_pick_example_prefers_a_clip_steering_moved_and_replay_gives_its_codes(model, run):
    trials, prompts, table = run
    row = evaluation.pick_example(table, "to jazz")
    assert row["kind"] in evaluation.examples.KINDS and row["segment"] == 1
    steered = table[(table.trial == "to jazz") & (table.control == "none") & (table.segment == 1)]
    twins = table[(table.control == "unsteered") & (table.segment == 1)].set_index(["seed", "clip"])
    moved = [(r.seed, r.clip) for r in steered.itertuples()
             if r.genre == "jazz" and twins.loc[(r.seed, r.clip), "genre"] != "jazz"]
    assert (row["kind"] == "moved") == bool(moved)
    if moved:
        assert (row["seed"], row["clip"]) in moved
        assert row["genre"] == "jazz" and row["twin_genre"] != "jazz"
    out = evaluation.replay(model, trials[0], row, duration=4.0, decode=False)
    again = score(out.codes[:, :, 20:40])  # the segment (2.0, 4.0) s at 10 frames/s
    assert again.loc[1, "genre"] == row["genre"] and again.loc[0, "genre"] == row["twin_genre"]
    assert again.loc[1, "loglik"] == pytest.approx(row["loglik"])
    with pytest.raises(KeyError, match="no steered clips"):
        evaluation.pick_example(table, "no such trial")


def test_best_trial_rule():
    s = pd.DataFrame({"trial": ["a", "b", "c", "d"], "moved": [0.2, 0.6, 0.6, 0.9],
                      "beats_random": [True, True, True, False]})
    r = evaluation.best_trial(s)
    assert r["trial"] == "b" and "beat every random draw" in r["rule"]   # d does not beat random; b before c
    r = evaluation.best_trial(s.assign(beats_random=False))
    assert r["trial"] == "d" and "no setting beat" in r["rule"]


def test_memo_reuses_clips_and_keeps_the_table(model, run, monkeypatch):
    """A memo shared between calls: the same table as without it; a later call that needs only
    clips generated before (twins, shared random draws, a repeated trial, prompted) generates none."""
    from mstools.evaluation import run as run_module
    trials, prompts, table = run
    memo: dict = {}
    kw = dict(seeds=[0, 1], duration=4.0, random_draws=3, segments=[(0.0, 1.6), (2.0, 4.0)])
    again = evaluation.steering(model, trials, prompts, memo=memo, **kw)
    pd.testing.assert_frame_equal(again, table)
    assert memo
    generated = []
    monkeypatch.setattr(run_module, "sweep", lambda *a, **k: generated.append("sweep"))
    monkeypatch.setattr(model, "generate", lambda *a, **k: generated.append("generate"))
    part = evaluation.steering(model, trials[1:2], prompts, memo=memo, **kw)
    assert generated == []
    mine = table[table["trial"].isin(["unsteered", "to rock"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.reset_index(drop=True), mine, check_dtype=False)


def test_prompted_clips_shared_by_trials_are_generated_once(model, monkeypatch):
    """Two trials with the same target ask for the same prompted clips: one generate of the distinct
    (text, clip) pairs, and both trials get the codes a separate call gives."""
    trials = [evaluation.Trial(f"jazz {i}", Steering(_vec(model, 10 + i), 0.5, branch="both"), {"genre": "jazz"})
              for i in range(3)]
    sizes = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda prompts, *a, **k: sizes.append(len(prompts)) or real(prompts, *a, **k))
    table = evaluation.steering(model, trials, [None] * 3, seeds=[0], duration=2.0, controls=("unsteered", "prompted"))
    monkeypatch.undo()
    assert 3 in sizes and 9 not in sizes
    want = score(model.generate(["jazz"] * 3, 2.0, seed=0, decode=False, noise_ids=[0, 1, 2]).codes)
    for t in trials:
        got = table[(table.trial == t.name) & (table.control == "prompted")].sort_values("clip")
        assert got["loglik"].to_numpy() == pytest.approx(want["loglik"].to_numpy())
