"""HookedMusicGen against independent references on both backends: the library's own forward and
sampler, a manual layer loop, teacher forcing.

Parametrised over :data:`conftest.BACKENDS` (audiocraft and transformers); the references come from
each library's code (see ``conftest.py``). ``test_describe_hooks_lists_modules`` and
``test_streaming_state_is_reset_after_a_failed_generation`` are about audiocraft's module tree and
streaming state and run on audiocraft only (transformers' module table is checked in
``test_backends.py``; it keeps no state inside its modules).
"""
from __future__ import annotations

import pytest
import torch
from conftest import (manual_resid_posts, out_proj, plain_generate, plain_logits, tiny_model,
                      transformer_layer)

from mstools.core.names import UnknownHookError

PROMPTS = ["jazz", "rock with brass"]


@pytest.fixture(scope="module")
def model(backend):
    return tiny_model(backend)


@pytest.fixture(scope="module")
def audiocraft_model():
    return tiny_model("audiocraft")


@pytest.fixture(scope="module")
def codes(model):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, model.card, (2, model.num_codebooks, 20), generator=g)


def _no_bridges(model):
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks, hp.name
        assert hp.bridge.handle is None, hp.name
    assert model.clock._handle is None and model.clock._users == 0


def _no_torch_hooks(model):
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.lm.modules())


def test_no_hooks_and_identity_hooks_match_the_library_logits(model, codes):
    ref = plain_logits(model, codes, PROMPTS)
    assert torch.equal(model(codes, PROMPTS), ref)
    with model.hooks([(lambda n: True, lambda x, hook: x)]):
        out = model(codes, PROMPTS)
    assert torch.equal(out, ref)
    _no_bridges(model)
    _no_torch_hooks(model)


def test_generation_bit_identical_to_the_library_generate(model):
    ref = plain_generate(model, PROMPTS, 0.6, seed=3, top_k=model.card)
    assert ref.shape == (2, model.num_codebooks, 15)
    out = model.generate(PROMPTS, duration=0.6, seed=3, top_k=model.card)
    assert torch.equal(out.codes, ref)
    out2 = model.generate(PROMPTS, duration=0.6, seed=3, top_k=model.card,
                          fwd_hooks=[(lambda n: True, lambda x, hook: x)], cache=True)
    assert torch.equal(out2.codes, ref)
    _no_bridges(model)
    _no_torch_hooks(model)


def test_resid_post_equals_manual_layer_loop(model, codes):
    _, cache = model.run_with_cache(codes, PROMPTS, names_filter="blocks.*.hook_resid_post")
    manual = manual_resid_posts(model, codes, PROMPTS)
    assert len(manual) == model.num_layers
    for layer_idx, x in enumerate(manual):
        torch.testing.assert_close(cache[f"blocks.{layer_idx}.hook_resid_post"], x, rtol=0, atol=0)


def test_hook_z_is_the_input_of_out_proj(model, codes):
    names = ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]
    _, cache = model.run_with_cache(codes, PROMPTS, names_filter=names)
    z = cache["blocks.1.attn.hook_z"]
    assert z.shape == (2, codes.shape[-1] + 3, model.num_heads, model.d_model // model.num_heads)
    with torch.no_grad():
        torch.testing.assert_close(out_proj(model, 1)(z.flatten(2)), cache["blocks.1.hook_attn_out"])


def test_hook_z_edit_of_one_head_matches_manual(model, codes):
    """Zeroing head 2 through hook_z equals subtracting that head's share of out_proj by hand."""
    _, cache = model.run_with_cache(codes, PROMPTS, names_filter=["blocks.0.attn.hook_z",
                                                                   "blocks.0.hook_attn_out"])
    z = cache["blocks.0.attn.hook_z"]
    dh = z.shape[-1]
    w = out_proj(model, 0).weight  # [D, D]
    expected = cache["blocks.0.hook_attn_out"] - z[:, :, 2] @ w[:, 2 * dh:3 * dh].T

    def zero_head(x, hook):
        x = x.clone()
        x[:, :, 2] = 0
        return x
    got = {}
    with model.hooks([("blocks.0.attn.hook_z", zero_head),
                      ("blocks.0.hook_attn_out", lambda x, hook: got.setdefault("a", x))]):
        model(codes, PROMPTS)
    torch.testing.assert_close(got["a"], expected, atol=1e-5, rtol=1e-5)


def test_generation_cache_equals_teacher_forcing_both_branches(model):
    out = model.generate(PROMPTS, duration=0.8, seed=5, cache=["blocks.0.hook_resid_post",
                                                               "blocks.1.attn.hook_z"])
    steps = out.cache.steps
    assert torch.equal(steps, torch.arange(out.codes.shape[-1] + model.num_codebooks - 1))
    _, tf = model.run_with_cache(out.codes, PROMPTS, names_filter=list(out.cache.cond))
    _, tf_null = model.run_with_cache(out.codes, [None, None], names_filter=list(out.cache.cond))
    for name in out.cache.cond:
        torch.testing.assert_close(out.cache.cond[name], tf[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.cache.uncond[name], tf_null[name], atol=1e-5, rtol=1e-4)


def test_clock_reads_the_cache_offset_each_step(model):
    seen = []
    model.generate(["jazz"], duration=0.4, seed=0,
                   fwd_hooks=[("blocks.0.hook_resid_post",
                               lambda x, hook: seen.append((x.shape[1], hook.clock.steps.tolist())))])
    assert len(seen) == int(0.4 * model.frame_rate) + model.num_codebooks - 1
    assert all(s == 1 for s, _ in seen)  # every generation step has length 1
    assert [st[0] for _, st in seen] == list(range(len(seen)))


def test_cond_only_edit_leaves_uncond_rows_bit_identical(model, codes):
    both = torch.cat([codes, codes])
    prompts = PROMPTS + [None, None]
    ref = model(both, prompts)

    def push_cond(x, hook):
        x = x.clone()
        x[hook.clock.rows("cond", x.shape[0])] += 10.0
        return x
    with model.cfg_layout(2), model.hooks([("blocks.0.hook_resid_post", push_cond)]):
        out = model(both, prompts)
    assert torch.equal(out[2:], ref[2:])
    assert not torch.allclose(out[:2], ref[:2])


def test_hooks_removed_after_exception_interrupt_and_nesting(model, codes):
    user_calls = []
    layer0 = transformer_layer(model, 0)
    user = layer0.register_forward_hook(lambda m, i, o: user_calls.append(1))
    try:
        for exc in (RuntimeError, KeyboardInterrupt):
            with pytest.raises(exc):
                with model.hooks([("blocks.*.hook_resid_post", lambda x, hook: None)]):
                    raise exc()
            _no_bridges(model)

        def boom(x, hook):
            raise ValueError("hook failed")
        with pytest.raises(ValueError):
            model.run_with_hooks(codes, PROMPTS, fwd_hooks=[("blocks.1.hook_mlp_out", boom)])
        _no_bridges(model)

        with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: None)]):
            with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: None)]):
                assert len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == 2
            assert len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == 1
            assert model.hook_dict["blocks.0.hook_resid_post"].bridge.handle is not None
        _no_bridges(model)
        # a typo adds nothing, even after valid names in the same call
        with pytest.raises(UnknownHookError):
            with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: None),
                              ("blocks.0.hook_resid_pots", lambda x, hook: None)]):
                pass
        _no_bridges(model)
        model(codes, PROMPTS)
        assert user_calls, "the user's own torch hook must survive"
        assert len(layer0._forward_hooks) == 1
    finally:
        user.remove()
    _no_torch_hooks(model)


def test_generation_hooks_removed_after_exception(model):
    calls = []

    def fail_late(x, hook):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("stop")
    ref = model.generate(["jazz"], duration=0.4, seed=0).codes
    with pytest.raises(RuntimeError):
        model.generate(["jazz"], duration=0.4, seed=0, fwd_hooks=[("blocks.1.hook_resid_post",
                                                                   fail_late)])
    _no_bridges(model)
    _no_torch_hooks(model)
    assert torch.equal(model.generate(["jazz"], duration=0.4, seed=0).codes, ref)  # nothing left over


@pytest.mark.audiocraft_only
def test_streaming_state_is_reset_after_a_failed_generation(audiocraft_model):
    """audiocraft keeps KV caches and offsets inside its modules: a failed step must clear them."""
    model = audiocraft_model

    def fail(x, hook):
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError):
        model.generate(["jazz"], duration=0.4, seed=0, fwd_hooks=[("blocks.1.hook_resid_post", fail)])
    _no_bridges(model)
    assert model.lm._streaming_state == {} or not model.lm._is_streaming


def test_batch_invariance(model, codes):
    names = ["blocks.1.hook_resid_post", "blocks.1.hook_cross_attn_out"]
    _, alone = model.run_with_cache(codes[:1], PROMPTS[:1], names_filter=names)
    many = torch.cat([codes, codes.flip(-1)])
    _, batch = model.run_with_cache(many, PROMPTS + ["a much longer prompt with many words", None],
                                    names_filter=names)
    for n in names:
        torch.testing.assert_close(batch[n][:1], alone[n], atol=1e-6, rtol=1e-5)


def test_unknown_hook_name_suggests_close_names(model):
    with pytest.raises(UnknownHookError) as e:
        model.check_names("blocks.1.hook_resid_pots")
    assert "blocks.1.hook_resid_post" in str(e.value)
    with pytest.raises(UnknownHookError) as e:
        model.check_names("blocks.7.hook_resid_post")
    assert "0..1" in str(e.value)
    assert model.check_names("blocks.*.hook_mlp_out") == ["blocks.0.hook_mlp_out",
                                                           "blocks.1.hook_mlp_out"]


def test_bad_codes_are_refused_clearly(model, codes):
    with pytest.raises(ValueError, match="codebooks"):
        model(codes[:, :2], PROMPTS)
    with pytest.raises(ValueError, match="lie in"):
        model(codes + model.card, PROMPTS)
    with pytest.raises(ValueError, match="prompts"):
        model(codes, ["only one"])


@pytest.mark.audiocraft_only
def test_describe_hooks_lists_modules(audiocraft_model):
    """audiocraft module paths (transformers': test_backends.py)."""
    model = audiocraft_model
    rows = {r["name"]: r for r in model.describe_hooks()}
    assert rows["blocks.1.hook_mlp_out"]["module"] == "lm.transformer.layers.1.layer_scale_2"
    for r in rows.values():  # every module path exists in audiocraft's LM
        model.lm.get_submodule(r["module"][3:]) if r["module"] != "lm" else None
