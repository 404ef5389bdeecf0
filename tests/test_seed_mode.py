"""mstools' seed mode (``seed_mix`` + ``hook_calls`` + ``seed_layer_shift``) against an independent
reimplementation of the released hook (``tests/_seed_reference.py``), on the exported testbed.

The reference runs as the released code does: torch forward hooks on
``model.decoder.model.decoder.layers[i]`` of a ``MusicgenForConditionalGeneration`` loaded with
``from_pretrained``, under transformers' own ``generate``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mstools
from mstools.steering import hook_calls, periodic
from mstools.steering.seed import apply_setting, seed_probe_hook, seed_steering, seed_vector

from _seed_reference import SeedHooks, generate_codes, released_vectors

PROMPTS = ["fast rock with brass", "soft classical piano", "slow jazz with strings"]
NEW_TOKENS = 63          # 6 s
LAYERS = [2, 3]          # with seed_layer_shift 2: probes 0 and 1


@pytest.fixture(scope="module")
def hf_pair(exported_testbed):
    """(transformers model + processor, loaded with from_pretrained; the same folder through mstools)."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration
    model = MusicgenForConditionalGeneration.from_pretrained(str(exported_testbed)).eval()
    processor = AutoProcessor.from_pretrained(str(exported_testbed))
    ours = mstools.load_musicgen(str(exported_testbed), device="cpu", backend="transformers")
    return model, processor, ours


@pytest.fixture(scope="module")
def probes(hf_pair):
    """Released-style probe rows ``[n_probes, 4 genres, D]``: genre mean minus overall mean of
    ``hidden_states[k + 1]`` (what probe ``k`` reads), from transformers' own output."""
    model, processor, _ = hf_pair
    from mstools.testbed import GENRES, make_dataset
    from mstools.model.backends.base import delay_sequence
    clips = make_dataset(32, frames=40, seed=7)
    codes = torch.stack([c.codes for c in clips])
    steps = delay_sequence(codes, 32)
    b, k, s = steps.shape
    inputs = processor(text=[c.prompt for c in clips], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=steps.reshape(b * k, s), output_hidden_states=True)
    hs = out.decoder_hidden_states                    # embeddings, layer outputs..., final norm
    n = len(hs) - 1
    genre = np.array([c.labels["genre"] for c in clips])
    rows = np.zeros((n, len(GENRES), hs[0].shape[-1]), dtype=np.float32)
    for kk in range(n):
        pooled = hs[kk + 1].mean(1).numpy()
        for ci, g in enumerate(GENRES):
            rows[kk, ci] = pooled[genre == g].mean(0) - pooled.mean(0)
    return rows, hs, codes, [c.prompt for c in clips]


def test_probe_index_k_reads_hidden_states_k_plus_1(hf_pair, probes):
    _, _, ours = hf_pair
    _, hs, codes, prompts = probes
    names = [seed_probe_hook(k, ours.num_layers) for k in range(ours.num_layers)]
    assert names[-1] == "ln_final.hook_normalized"
    _, cache = ours.run_with_cache(codes, prompts, names_filter=names)
    for k, name in enumerate(names):
        torch.testing.assert_close(cache[name], hs[k + 1], atol=1e-5, rtol=0)


def test_seed_vector_applies_the_off_by_two(hf_pair, probes):
    _, _, ours = hf_pair
    rows = probes[0]
    ref = released_vectors(rows, target_class=1, target_layers=LAYERS)
    dirs = {seed_probe_hook(k, ours.num_layers): torch.from_numpy(rows[k, 1]) for k in range(len(rows))}
    vec = seed_vector(dirs, LAYERS, num_layers=ours.num_layers, fingerprint=ours.fingerprint)
    for i in LAYERS:
        got = vec[f"blocks.{i}.hook_resid_post"]
        torch.testing.assert_close(got / got.norm(), ref[i])
    with pytest.raises(ValueError, match="out of range"):
        seed_vector(dirs, [1], num_layers=ours.num_layers, fingerprint=ours.fingerprint)
    same = seed_vector(dirs, [1], num_layers=ours.num_layers, fingerprint="x", seed_layer_shift=0)
    assert torch.equal(same["blocks.1.hook_resid_post"], dirs["blocks.1.hook_resid_post"])


def test_hook_calls_counts_as_the_released_counter():
    hooks = SeedHooks({0: torch.ones(2), 1: torch.ones(2)}, {0: 1.0, 1: 1.0}, freq=5, offset=3)
    sched = hook_calls(every=5, offset=3)
    z, s = torch.zeros(1), torch.zeros(1, dtype=torch.long)
    fired = []
    for call in range(1, 21):                    # layers 0 and 1 alternate, one counter
        w = sched(z, s).item()
        hooks.count += 1
        assert (w == 1.0) == (hooks.count % 5 == 0)
        if w:
            fired.append(call)
    assert fired == [2, 7, 12, 17] and sched.count == 23
    assert sched.reset().count == 3


def _steered_steps(ours, run, layer: int) -> list[int]:
    """Steps at which a released-style hook on ``layer`` steers during ``run()`` (read by a mstools
    hook on the same module, which sees the step of every call)."""
    hooks = SeedHooks({layer: torch.zeros(ours.d_model)}, {layer: 0.0}, freq=25, offset=0)
    steps = []
    model = ours.backend.composite
    with ours.hooks([(f"blocks.{layer}.hook_resid_post",
                      lambda x, hook: steps.append(int(hook.clock.steps[0])))]):
        with hooks.attach(model):
            run()
    return [steps[c - 1] for c, _ in hooks.steered]


def test_released_schedule_is_phase_23_or_24_not_periodic_25(hf_pair):
    """One layer, offset 0: steps 23, 48 under the composite's generate (its step 0 runs twice),
    24, 49 under a decoder-only generate (mstools') — never steps 0, 25, 50 (periodic(25))."""
    model, processor, ours = hf_pair
    inputs = processor(text=PROMPTS[:1], padding=True, return_tensors="pt")
    composite = _steered_steps(ours, lambda: ours.backend.composite.generate(
        **inputs, max_new_tokens=NEW_TOKENS), layer=2)
    decoder_only = _steered_steps(ours, lambda: ours.generate(PROMPTS[:1], 6.0, seed=0), layer=2)
    assert composite == [23, 48] and decoder_only == [24, 49]
    steps = torch.arange(NEW_TOKENS)
    w = periodic(25, phase=23)(steps / 10.0, steps)
    assert w.nonzero().flatten().tolist() == composite


@pytest.mark.parametrize("every,offset", [(25, 0), (5, 2)])
def test_seed_mode_reproduces_the_released_hook(hf_pair, probes, every, offset):
    """Same steered codes: the reference hook under transformers' generate; mstools' seed mode under
    the same generate; mstools' seed mode under mstools' generate."""
    model, processor, ours = hf_pair
    rows = probes[0]
    target = 2                                                     # classical
    ref_vectors = released_vectors(rows, target, LAYERS)
    strengths = {2: 0.8, 3: 0.5}
    hooks = SeedHooks(ref_vectors, strengths, freq=every, offset=offset)
    plain = generate_codes(model, processor, PROMPTS, NEW_TOKENS, seed=11)
    with hooks.attach(model):
        reference = generate_codes(model, processor, PROMPTS, NEW_TOKENS, seed=11)
    assert not torch.equal(reference, plain)                       # the hook does something

    dirs = {seed_probe_hook(k, ours.num_layers): torch.from_numpy(rows[k, target])
            for k in range(len(rows))}
    vec = seed_vector(dirs, LAYERS, num_layers=ours.num_layers, fingerprint=ours.fingerprint)
    weights = {f"blocks.{i}.hook_resid_post": strengths[i] for i in LAYERS}

    # 1. mstools' hooks, transformers' own generate (same composite as mstools')
    setting = seed_steering(vec, 1.0, every=every, offset=offset, weights=weights)
    with ours.cfg_layout(len(PROMPTS)), apply_setting(ours, setting):
        through_hf = generate_codes(ours.backend.composite, processor, PROMPTS, NEW_TOKENS, seed=11)
    assert torch.equal(through_hf, reference)

    # 2. mstools' generate: one decoder call per step, so count as the composite does
    setting = seed_steering(vec, 1.0, every=every, offset=offset, weights=weights,
                            as_composite_generate=True)
    with apply_setting(ours, setting):
        through_ours = ours.generate(PROMPTS, 6.0, seed=11).codes
    assert torch.equal(through_ours, reference)
