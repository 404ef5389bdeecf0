"""Paired sampling (mstools.model.sampling): the same distribution as the backends' samplers, and the
same numbers for the same (seed, noise id) wherever a clip sits in a batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_testbed, tiny_model
from scipy.stats import chisquare

from mstools.model import sampling


def test_uniform_is_a_pure_function_of_its_key():
    ids, steps = torch.tensor([0, 5, 5, 9]), torch.tensor([3, 4])
    u = sampling.uniform(7, ids, steps, codebooks=2, card=16)
    assert u.shape == (4, 2, 2, 16) and bool(((u > 0) & (u < 1)).all())
    assert torch.equal(u[1], u[2]) and not torch.equal(u[0], u[1])
    assert not torch.equal(u, sampling.uniform(8, ids, steps, 2, 16))
    # one key's numbers do not depend on the others asked for with it
    alone = sampling.uniform(7, torch.tensor([9]), torch.tensor([4]), 2, 16)
    assert torch.equal(alone[0, :, 0], u[3, :, 1])


def test_uniform_numbers_look_uniform_and_independent():
    u = sampling.uniform(0, torch.arange(4000), torch.tensor([0]), 1, 8).flatten().numpy()
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert chisquare(counts).pvalue > 1e-3
    a, b = u[:-1], u[1:]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


@pytest.mark.parametrize("backend", ["audiocraft", "transformers"])
def test_paired_sampling_draws_from_the_top_k_distribution(backend):
    """First-step tokens of 3000 clips (one noise id each) against softmax(top-k(l) / T), where l is
    the guided logits the backend computes: a chi-square test on codebook 0."""
    model = tiny_model(backend)
    top_k, temperature = 8, 1.3
    n = 3000
    out = model.generate([None] * n, 1 / model.frame_rate, seed=3, decode=False, noise_ids=range(n),
                         top_k=top_k, temperature=temperature, cache="hook_logits")
    x = out.cache.cond["hook_logits"][0, 0, 0].double()     # conditional row, codebook 0, step 0
    u = out.cache.uncond["hook_logits"][0, 0, 0].double()
    # the cache records the logits the hook saw after the noise was added: recompute the clean ones
    clean = model.generate([None], 1 / model.frame_rate, seed=3, decode=False, cache="hook_logits",
                           use_sampling=False)
    c0 = clean.cache.cond["hook_logits"][0, 0, 0].double()
    u0 = clean.cache.uncond["hook_logits"][0, 0, 0].double()
    cfg = model.backend.defaults["cfg_coef"]
    l = u0 + cfg * (c0 - u0)
    keep = l >= l.topk(top_k).values[-1]
    p = torch.where(keep, torch.softmax(torch.where(keep, l / temperature, torch.tensor(-1e9, dtype=l.dtype)), -1),
                    torch.zeros_like(l)).numpy()
    tokens = out.codes[:, 0, 0].numpy()
    assert set(np.unique(tokens)) <= set(np.flatnonzero(keep.numpy()))
    idx = np.flatnonzero(keep.numpy())
    observed = np.array([(tokens == i).sum() for i in idx])
    assert chisquare(observed, p[idx] * n).pvalue > 1e-3
    assert not torch.equal(x, c0) and not torch.equal(u, u0)  # the noise went through the hook


def test_a_clip_draws_the_same_codes_alone_or_in_a_batch():
    model = load_testbed("audiocraft")
    alone = model.generate(["jazz"], 3.0, seed=4, decode=False, noise_ids=[7]).codes
    batch = model.generate(["rock", "jazz", None], 3.0, seed=4, decode=False, noise_ids=[1, 7, 2]).codes
    assert torch.equal(alone[0], batch[1])
    other_seed = model.generate(["jazz"], 3.0, seed=5, decode=False, noise_ids=[7]).codes
    assert not torch.equal(alone, other_seed)


def test_both_backends_draw_the_same_paired_codes():
    ac, hf = load_testbed("audiocraft"), load_testbed("transformers")
    args = (["rock", "jazz", None], 3.0)
    kw = dict(seed=4, decode=False, noise_ids=[1, 7, 2])
    assert torch.equal(ac.generate(*args, **kw).codes, hf.generate(*args, **kw).codes)


def test_bad_noise_ids_are_refused():
    model = tiny_model("audiocraft")
    with pytest.raises(ValueError, match="one per clip"):
        model.generate(["a", "b"], 0.2, noise_ids=[1])
