"""The transformers backend against the audiocraft reference, and against transformers' own paths.

The testbed's weights are mapped into transformers' ``MusicgenForCausalLM``
(``mstools.model.backends.convert``): the two implementations must then agree on logits, on every hook,
on generated codes and on what a steering vector does. Hook mechanics and bit-identity with each
library's own forward and generate run on both backends in ``tests/test_hooked.py``.
"""
from __future__ import annotations

import pytest
import torch

import mstools
from mstools.model.backends.base import delay_sequence
from mstools.model.backends.convert import audiocraft_to_transformers, transformers_to_audiocraft
from mstools.steering import SteeringVector, apply

PROMPTS = ["fast rock with brass", None, "slow jazz with piano"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def pair():
    return mstools.load_musicgen("testbed"), mstools.load_musicgen("testbed", backend="transformers")


@pytest.fixture(scope="module")
def codes(pair):
    return pair[0].reference_clips(3, 3.0)[0]


@pytest.fixture(scope="module")
def tiny_hf():
    return mstools.build_musicgen("tiny", seed=0, backend="transformers")


def test_weight_mapping_round_trips(pair):
    ac = pair[0].lm.state_dict()
    back = transformers_to_audiocraft(audiocraft_to_transformers(ac))
    lm_keys = {k for k in ac if not k.startswith("condition_provider.")
               or k.startswith("condition_provider.conditioners.description.output_proj")}
    assert set(back) == lm_keys
    assert all(torch.equal(back[k], ac[k]) for k in lm_keys)
    # and the mapped decoder holds exactly these weights
    dec = pair[1].backend.decoder.state_dict()
    q, k, v = (dec[f"model.decoder.layers.2.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(torch.cat([q, k, v]), ac["transformer.layers.2.self_attn.in_proj_weight"])


def test_unknown_weight_is_refused():
    with pytest.raises(ValueError, match="no transformers counterpart"):
        audiocraft_to_transformers({"transformer.layers.0.layer_scale_1.scale": torch.zeros(3)})


def test_same_logits_for_the_same_codes_and_condition(pair, codes):
    ac, hf = pair
    la, lh = ac(codes, PROMPTS), hf(codes, PROMPTS)
    assert la.shape == lh.shape == (3, 4, codes.shape[-1] + 3, ac.card)
    torch.testing.assert_close(lh, la, atol=ATOL, rtol=0)
    # the condition matters (so agreement is not trivial)
    assert (ac(codes, [None] * 3) - la).abs().max() > 1.0


def test_every_hook_has_the_same_name_shape_and_value(pair, codes):
    ac, hf = pair
    assert ac.hook_names == hf.hook_names
    _, ca = ac.run_with_cache(codes, PROMPTS)
    _, ch = hf.run_with_cache(codes, PROMPTS)
    for name in ac.hook_names:
        assert ca[name].shape == ch[name].shape, name
        torch.testing.assert_close(ch[name], ca[name], atol=ATOL, rtol=0, msg=name)
    assert torch.equal(ca.steps, ch.steps)


def test_embed_hook_reads_the_exact_sum_and_writes_through(pair, codes):
    hf = pair[1]
    seq = hf.to_sequence(codes)
    tables = hf.backend.decoder.model.decoder.embed_tokens
    manual = sum(tables[k](seq[:, k]) for k in range(hf.num_codebooks))
    _, cache = hf.run_with_cache(codes, PROMPTS, names_filter=["hook_embed", "blocks.0.hook_resid_pre"])
    assert torch.equal(cache["hook_embed"], manual)
    delta = torch.randn(hf.d_model, generator=torch.Generator().manual_seed(0))
    with hf.hooks([("hook_embed", lambda x, hook: x + delta)]):
        _, moved = hf.run_with_cache(codes, PROMPTS, names_filter=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(moved["blocks.0.hook_resid_pre"] - cache["blocks.0.hook_resid_pre"],
                               delta.expand_as(manual), atol=1e-5, rtol=0)

    def inplace(x, hook):
        x += delta
    with hf.hooks([("hook_embed", inplace)]):
        _, moved2 = hf.run_with_cache(codes, PROMPTS, names_filter=["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(moved2["blocks.0.hook_resid_pre"], moved["blocks.0.hook_resid_pre"])


@pytest.mark.parametrize("params", [{"use_sampling": False}, {}], ids=["greedy", "sampled"])
def test_generation_gives_the_same_codes(pair, params):
    ac, hf = pair
    oa = ac.generate(PROMPTS, 3.0, seed=5, **params)
    oh = hf.generate(PROMPTS, 3.0, seed=5, **params)
    assert oa.codes.shape == oh.codes.shape == (3, 4, 30)
    if params:
        assert torch.equal(oa.codes, oh.codes)
        # transformers decodes with the testbed's EnCodec: the synth to float rounding (~80 dB SNR)
        torch.testing.assert_close(oh.audio, oa.audio, atol=1e-4, rtol=0)
    else:  # same seed, same distributions: draws agree unless rounding crosses a boundary
        assert (oa.codes == oh.codes).float().mean() > 0.95


def test_continuation_gives_the_same_codes(pair):
    ac, hf = pair
    first = ac.generate(PROMPTS, 1.0, seed=2)
    oa = ac.generate(PROMPTS, 3.0, seed=3, use_sampling=False, audio_prompt=first.audio,
                     audio_prompt_sample_rate=first.sample_rate)
    oh = hf.generate(PROMPTS, 3.0, seed=3, use_sampling=False, audio_prompt=first.audio,
                     audio_prompt_sample_rate=first.sample_rate)
    assert oh.codes.shape == (3, 4, 30)
    assert torch.equal(oh.codes[..., :10], first.codes)
    assert torch.equal(oa.codes, oh.codes)


def test_a_steering_vector_has_the_same_effect(pair, codes):
    ac, hf = pair
    assert ac.fingerprint == hf.fingerprint  # one vector serves both
    g = torch.Generator().manual_seed(11)
    vec = SteeringVector({"blocks.1.hook_resid_post": torch.randn(ac.d_model, generator=g)},
                         ac.fingerprint, source="random-test")
    results = {}
    for model in (ac, hf):
        plain = model.generate(PROMPTS, 3.0, seed=4, use_sampling=False).codes
        with apply(vec, model, strength=2.0, branch="cond"):
            steered = model.generate(PROMPTS, 3.0, seed=4, use_sampling=False).codes
            logits = model(codes, PROMPTS)
        results[model.backend_name] = plain, steered, logits
    pa, sa, la = results["audiocraft"]
    ph, sh, lh = results["transformers"]
    assert not torch.equal(sa, pa)  # the vector does something
    assert torch.equal(sa, sh) and torch.equal(pa, ph)
    torch.testing.assert_close(lh, la, atol=ATOL, rtol=0)


def test_generation_cache_equals_teacher_forcing_on_both_branches(pair):
    hf = pair[1]
    names = ["blocks.2.hook_resid_post", "blocks.0.attn.hook_z", "hook_logits"]
    out = hf.generate(PROMPTS, 2.0, seed=3, cache=names)
    s = out.cache.cond[names[0]].shape[1]
    assert s == 20 + 3 and torch.equal(out.cache.steps, torch.arange(s))
    _, cond = hf.run_with_cache(out.codes, PROMPTS, names_filter=names)
    _, unc = hf.run_with_cache(out.codes, [None] * 3, names_filter=names)
    for n in names:
        torch.testing.assert_close(out.cache.cond[n], cond[n][:, :s], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.cache.uncond[n], unc[n][:, :s], atol=ATOL, rtol=0)


def test_describe_hooks_names_real_transformers_modules(tiny_hf):
    dec = tiny_hf.backend.decoder
    for row in tiny_hf.describe_hooks():
        path = row["module"][len("decoder."):] if row["module"] != "decoder" else ""
        assert dec.get_submodule(path) is not None
    assert tiny_hf.describe_hooks()[-1]["module"] == "decoder"


def test_delay_pattern_matches_audiocraft(pair, codes):
    ac = pair[0]
    assert torch.equal(delay_sequence(codes, ac.special_token_id), ac.to_sequence(codes))


def test_frames_and_guidance_rules(tiny_hf):
    out = tiny_hf.generate(["jazz"], 0.8, seed=0, decode=False)
    assert out.codes.shape == (1, 4, int(0.8 * tiny_hf.frame_rate))  # N frames need N + 3 steps
    with pytest.raises(ValueError, match="cfg_coef"):
        tiny_hf.generate(["jazz"], 0.4, cfg_coef=0.5)
    unguided = tiny_hf.generate(["jazz"], 0.4, seed=0, cfg_coef=1.0, cache="hook_logits")
    assert unguided.cache.uncond is None  # no guidance: no doubled batch
    with pytest.raises(TypeError, match="unknown generation parameter"):
        tiny_hf.generate(["jazz"], 0.4, guidance_scale=3.0)


def test_unknown_backend_and_missing_weights():
    with pytest.raises(ValueError, match="unknown backend"):
        mstools.load_musicgen("testbed", backend="jax")
    with pytest.raises(mstools.MissingWeightsError, match="musicgen-small"):
        mstools.load_musicgen("facebook/musicgen-small", backend="transformers")


@pytest.mark.parametrize("scale", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_released_layout_maps_with_gelu(scale):
    """audiocraft's MusicGen layout (GELU MLP, LUT text condition) on transformers' decoder: the
    testbed uses ReLU, the released configs GELU, so both activations are covered."""
    from mstools.model.backends.transformers_backend import backend_from_audiocraft
    from mstools.model.hooked import HookedMusicGen
    ac = mstools.build_musicgen(scale, seed=0)
    hf = HookedMusicGen(backend_from_audiocraft(ac.musicgen), name=ac.model_name)
    assert hf.backend.decoder.config.activation_function == "gelu"
    assert hf.fingerprint == ac.fingerprint
    codes = torch.randint(0, ac.card, (2, 4, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hf(codes, ["jazz", None]), ac(codes, ["jazz", None]),
                               atol=ATOL, rtol=0)
    oa = ac.generate(["jazz", "rock"], 0.3, seed=1, use_sampling=False, decode=False)
    oh = hf.generate(["jazz", "rock"], 0.3, seed=1, use_sampling=False, decode=False)
    assert torch.equal(oa.codes, oh.codes)


def test_a_saved_transformers_folder_loads_through_load_musicgen(tiny_hf, tmp_path):
    tiny_hf.backend.composite.save_pretrained(tmp_path)
    tiny_hf.backend.text.tokenizer.save_pretrained(tmp_path)
    loaded = mstools.load_musicgen(str(tmp_path), backend="transformers", device="cpu")
    assert loaded.backend_name == "transformers" and loaded.hook_names == tiny_hf.hook_names
    a = tiny_hf.generate(["jazz"], 0.4, seed=2, cache="blocks.1.hook_resid_post")
    b = loaded.generate(["jazz"], 0.4, seed=2, cache="blocks.1.hook_resid_post")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.audio, b.audio)
    assert torch.equal(a.cache["blocks.1.hook_resid_post"], b.cache["blocks.1.hook_resid_post"])
