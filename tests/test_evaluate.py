"""Steering evaluation on the testbed: the table, the controls, and the quality measures, on both
backends (the testbed's weights in audiocraft's LM and in transformers' decoder)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import library_special_token, load_testbed, plain_logits

from mstools import evaluate
from mstools.steering import Steering, SteeringVector
from mstools.testbed import score


@pytest.fixture(scope="module")
def model(backend):
    return load_testbed(backend)


def test_steering_table_and_controls(model):
    h = "blocks.2.hook_resid_post"
    v = SteeringVector({h: torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))},
                       model.fingerprint, source="rand")
    trials = [evaluate.Trial("t", Steering(v, 0.0, branch="both"), {"genre": "jazz"})]
    df = evaluate.steering(model, trials, ["rock"] * 4, seeds=[0], duration=3.0,
                           use_sampling=False)  # greedy: rows of one batch are comparable
    assert set(df["control"]) == {"unsteered", "none", "random", "prompted"}
    un = df[df.control == "unsteered"].reset_index(drop=True)
    st = df[df.control == "none"].reset_index(drop=True)
    # strength 0 in the same (greedy) batch: identical labels and loglik to the unsteered rows
    assert list(un["genre"]) == list(st["genre"]) and list(un["loglik"]) == list(st["loglik"])
    # the scores are the grammar's, recomputed independently
    out = model.generate(["jazz"] * 4, 3.0, seed=0, decode=False, use_sampling=False)
    pr = df[df.control == "prompted"].reset_index(drop=True)
    assert list(pr["genre"]) == list(score(out.codes)["genre"])
    assert pr["hit_genre"].mean() >= 0.75  # prompting the target works on the testbed
    s = evaluate.summarize(df)
    assert {"success", "success_lo", "success_hi", "hit_genre", "loglik"} <= set(s.columns)


def test_random_like_keeps_norms():
    v = SteeringVector({"a": torch.tensor([3.0, 4.0]), "b": torch.ones(3)}, "fp", source="x")
    r = evaluate.random_like(v, seed=1)
    for h in v.hooks:
        assert math.isclose(float(r[h].norm()), float(v[h].norm()), rel_tol=1e-6)
        assert not torch.allclose(r[h], v[h])


def test_wilson_matches_formula():
    lo, hi = evaluate.wilson(8, 10)
    p, n, z = 0.8, 10, 1.96
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert math.isclose(lo, c - w) and math.isclose(hi, c + w)
    assert evaluate.wilson(0, 10)[0] == 0.0


def test_nll_matches_manual_cross_entropy(model):
    out = model.generate(["rock", "jazz"], 2.0, seed=0, decode=False)
    got = evaluate.nll(model, out.codes, ["rock", "jazz"])
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


def test_segments_are_scored_when_asked(model):
    h = "blocks.1.hook_resid_post"
    v = SteeringVector({h: torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))},
                       model.fingerprint, source="rand")
    trials = [evaluate.Trial("t", Steering(v, 0.3, branch="both"), {"genre": "jazz"})]
    df = evaluate.steering(model, trials, [None] * 2, seeds=[0], duration=4.0, segment_seconds=2.0,
                           controls=("unsteered",))
    assert sorted(df["segment"].unique()) == [0, 1]
    assert len(df) == 2 * 2 * 2  # (unsteered + trial) x 2 clips x 2 segments
