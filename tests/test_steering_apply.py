"""Steering attached to a model, against manual computations and unsteered runs, on both backends
(parametrised over :data:`conftest.BACKENDS`)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from mstools.steering import (Steerer, Steering, SteeringVector, apply, mean_norms, schedules,
                              sweep)

H = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model(backend):
    return tiny_model(backend)


@pytest.fixture(scope="module")
def vec(model):
    g = torch.Generator().manual_seed(7)
    return SteeringVector({H: torch.randn(model.d_model, generator=g)}, model.fingerprint,
                          source="random-test")


@pytest.fixture(scope="module")
def codes(model):
    return torch.randint(0, model.card, (2, 4, 16), generator=torch.Generator().manual_seed(2))


GREEDY = dict(use_sampling=False)


def test_strength_zero_is_bit_identical(model, vec):
    ref = model.generate(["jazz", "rock"], duration=0.6, seed=1, cache=[H, "hook_logits"])
    with apply(vec, model, strength=0.0):
        out = model.generate(["jazz", "rock"], duration=0.6, seed=1, cache=[H, "hook_logits"])
    assert torch.equal(out.codes, ref.codes)
    assert torch.equal(out.cache.cond["hook_logits"], ref.cache.cond["hook_logits"])


def test_add_in_mean_norm_units_matches_manual(model, vec, codes):
    norm = mean_norms(model, [H])[H]
    _, ref = model.run_with_cache(codes, ["a", "b"], names_filter=[H])
    with apply(vec, model, strength=0.5):
        _, got = model.run_with_cache(codes, ["a", "b"], names_filter=[H])
    v = vec[H] / vec[H].norm()
    torch.testing.assert_close(got[H], ref[H] + 0.5 * norm * v, rtol=1e-6, atol=1e-6)


def test_mean_norm_is_the_mean_activation_norm(model):
    out = model.generate([None, None], duration=0.4, seed=3, decode=False)
    n = mean_norms(model, [H], codes=out.codes)[H]
    _, cache = model.run_with_cache(out.codes, None, names_filter=[H])
    assert math.isclose(n, float(cache[H].norm(dim=-1).mean()), rel_tol=1e-6)


def test_seed_mix_operator_on_model_matches_formula(model, vec, codes):
    _, ref = model.run_with_cache(codes, ["a", "b"], names_filter=[H])
    with apply(vec, model, strength=0.5, operator="seed_mix"):
        _, got = model.run_with_cache(codes, ["a", "b"], names_filter=[H])
    h = ref[H]
    v = vec[H] / vec[H].norm()
    expected = (h + 0.5 * h.norm(dim=-1, keepdim=True) * v) / 1.5
    torch.testing.assert_close(got[H], expected, rtol=1e-5, atol=1e-6)


def test_window_leaves_earlier_steps_bit_identical(model, vec):
    kw = dict(duration=1.2, seed=4, cache=[H, "blocks.1.hook_resid_post"])
    ref = model.generate(["jazz"], **kw)
    t0 = 0.6
    with apply(vec, model, strength=3.0, schedule=schedules.window(t0, None)):
        out = model.generate(["jazz"], **kw)
    first = int(t0 * model.frame_rate)  # first steered step
    for name in kw["cache"]:
        assert torch.equal(out.cache.cond[name][:, :first], ref.cache.cond[name][:, :first])
        assert not torch.allclose(out.cache.cond[name][:, first:], ref.cache.cond[name][:, first:])
    # codes sampled before the window are the same
    assert torch.equal(out.codes[..., : first - 3], ref.codes[..., : first - 3])


def test_cond_branch_only_leaves_uncond_rows_untouched(model, vec, codes):
    both, prompts = torch.cat([codes, codes]), ["a", "b", None, None]
    ref = model(both, prompts)
    with model.cfg_layout(2), apply(vec, model, strength=2.0, branch="cond"):
        out = model(both, prompts)
    assert torch.equal(out[2:], ref[2:]) and not torch.allclose(out[:2], ref[:2])
    with model.cfg_layout(2), apply(vec, model, strength=2.0, branch="uncond"):
        out = model(both, prompts)
    assert torch.equal(out[:2], ref[:2]) and not torch.allclose(out[2:], ref[2:])


def test_head_subset_only_moves_chosen_heads(model, codes):
    zname = "blocks.1.attn.hook_z"
    hz = torch.randn(model.num_heads, model.d_model // model.num_heads)
    v = SteeringVector({zname: hz}, model.fingerprint, source="heads")
    _, ref = model.run_with_cache(codes, ["a", "b"], names_filter=[zname])
    with apply(v, model, strength=1.0, units="raw", heads=[1]):
        _, got = model.run_with_cache(codes, ["a", "b"], names_filter=[zname])
    diff = (got[zname] - ref[zname]).abs().amax(dim=(0, 1, 3))
    assert diff[1] > 0 and torch.all(diff[[0, 2, 3]] == 0)
    torch.testing.assert_close(got[zname][:, :, 1], ref[zname][:, :, 1] + hz[1])


def test_sweep_rows_follow_their_own_settings(model, vec):
    prompts = ["jazz", "rock"]
    settings = [None, Steering(vec, 0.0), Steering(vec, 2.5)]
    res = sweep(model, prompts, settings, duration=0.6, seed=0, cache=[H], **GREEDY)
    out = res.output
    assert out.codes.shape[0] == 6 and list(res.rows["setting"]) == [0, 0, 1, 1, 2, 2]
    alone = model.generate(prompts, duration=0.6, seed=0, cache=[H], **GREEDY)
    with apply(vec, model, strength=2.5):
        steered = model.generate(prompts, duration=0.6, seed=0, cache=[H], **GREEDY)
    torch.testing.assert_close(out.cache.cond[H][0:2], alone.cache.cond[H], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.cache.cond[H][2:4], alone.cache.cond[H], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.cache.cond[H][4:6], steered.cache.cond[H], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(steered.cache.cond[H], alone.cache.cond[H])


def test_refusals(model, vec):
    other = tiny_model(model.backend_name, seed=1)
    with pytest.raises(ValueError, match="made for model"):
        with apply(vec, other, strength=1.0):
            pass
    bad = SteeringVector({H: torch.ones(model.d_model + 1)}, model.fingerprint)
    with pytest.raises(ValueError, match="shape"):
        with apply(bad, model):
            pass
    for s in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            with apply(vec, model, strength=s):
                pass
    with pytest.raises(ValueError, match="branch"):
        with apply(vec, model, branch="conditional"):
            pass
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks


def test_hooks_gone_after_exception_mid_generation(model, vec):
    calls = []

    def fail(x, hook):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with apply(vec, model, strength=1.0):
            model.generate(["jazz"], duration=0.6, seed=0, fwd_hooks=[("blocks.1.hook_mlp_out", fail)])
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks and hp.bridge.handle is None


def test_steerer_knob(model, vec):
    knob = Steerer(model)
    ref = knob.generate(["jazz"], duration=0.4, seed=0)
    knob.set(vec, strength=3.0)
    moved = knob.generate(["jazz"], duration=0.4, seed=0, cache=[H])
    with apply(vec, model, strength=3.0):
        direct = model.generate(["jazz"], duration=0.4, seed=0, cache=[H])
    assert torch.equal(moved.codes, direct.codes)
    knob.reset()
    assert torch.equal(knob.generate(["jazz"], duration=0.4, seed=0).codes, ref.codes)
    with pytest.raises(ValueError):
        knob.set(vec, strength=float("nan"))
