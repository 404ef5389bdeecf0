"""The steering panel driven through its widgets, against Steerer, plain generate and run_with_cache,
on both backends."""
from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

import mstools
from mstools.ui.audio import wav_bytes
from mstools.steering import Steerer, SteeringVector
from mstools.ui.widgets import SteeringPanel

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
PROMPT = "fast rock with brass"
DURATION = 2.0


def _array(y) -> np.ndarray:
    """A plotly JSON array (a list, or base64 ``bdata`` with a ``dtype``) as numpy."""
    if isinstance(y, dict):
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"])
    return np.asarray(y)


def no_hooks_attached(model) -> bool:
    return all(not hp.fwd_hooks for hp in model.hook_dict.values())


@pytest.fixture(scope="module", params=["audiocraft", "transformers"])
def model(request):
    return mstools.load_musicgen("testbed", backend=request.param)


@pytest.fixture(scope="module")
def vectors(model):
    g = torch.Generator().manual_seed(0)
    two = SteeringVector({H1: torch.randn(model.d_model, generator=g),
                          H2: torch.randn(model.d_model, generator=g)}, model.fingerprint,
                         source="random-two-layers")
    one = SteeringVector({H2: torch.randn(model.d_model, generator=g)}, model.fingerprint,
                         source="random-one-layer")
    return {"two": two, "one": one}


@pytest.fixture
def panel(model, vectors):
    p = SteeringPanel(model, vectors, prompts=[PROMPT, "slow jazz with piano"], duration=DURATION)
    p.seed.value = 3
    return p


def test_steered_clip_equals_steerer(panel, model, vectors):
    panel.hooks.value = (H2,)
    panel.strength.value = 1.5
    panel.window.value = (0.5, 1.5)
    panel.branch.value = "both"
    assert panel.run(sync=True) and panel.last_error is None, panel.last_error
    ref = Steerer(model).set(vectors["two"], 1.5, schedule=(0.5, 1.5), branch="both",
                             hooks=[H2]).generate([PROMPT], DURATION, seed=3, noise_ids=[0])
    res = panel.result
    assert torch.equal(res.steered.codes, ref.codes)
    assert panel.steered_audio.value == wav_bytes(ref.audio[0], ref.sample_rate)
    plain = model.generate([PROMPT], DURATION, seed=3, noise_ids=[0])
    assert torch.equal(res.unsteered.codes, plain.codes)
    assert panel.unsteered_audio.value == wav_bytes(plain.audio[0], plain.sample_rate)
    assert not torch.equal(res.steered.codes, plain.codes)  # the setting does something
    assert panel.progress.value == 100 and not panel.busy and no_hooks_attached(model)
    # a window reaching the clip's end steers to the end (the trailing delay-pattern steps too)
    panel.window.value = (1.0, DURATION)
    panel.run(sync=True)
    ref = Steerer(model).set(vectors["two"], 1.5, schedule=(1.0, None), branch="both",
                             hooks=[H2]).generate([PROMPT], DURATION, seed=3, noise_ids=[0])
    assert torch.equal(panel.result.steered.codes, ref.codes)


def test_strength_zero_gives_the_unsteered_codes(panel, model):
    panel.strength.value = 0.0
    panel.run(sync=True)
    plain = model.generate([PROMPT], DURATION, seed=3, noise_ids=[0])
    assert panel.last_error is None
    assert torch.equal(panel.result.steered.codes, plain.codes)
    assert torch.equal(panel.result.unsteered.codes, plain.codes)


def test_invalid_settings_show_an_error_and_leave_no_hooks(panel, model):
    panel.strength.value = float("nan")
    assert panel.run(sync=True)
    assert panel.result is None and "finite" in panel.last_error
    assert "Could not generate" in panel.status.value and "Traceback" not in panel.status.value
    assert no_hooks_attached(model)
    # fails inside generation, after the steering hooks were attached
    panel.strength.value = 1.0
    panel.prompt.value = "fast rock " * 10                        # more tokens than the conditioner holds
    assert panel.run(sync=True)
    assert "tokens" in panel.last_error and panel.result is None
    assert no_hooks_attached(model) and not panel.busy and not panel.generate_button.disabled
    panel.prompt.value = PROMPT
    panel.window.value = (1.0, 1.0)
    panel.run(sync=True)
    assert "window is empty" in panel.last_error and no_hooks_attached(model)
    panel.window.value = (0.0, DURATION)
    panel.hooks.value = ()
    panel.run(sync=True)
    assert "at least one hook" in panel.last_error
    panel.hooks.value = (H1,)
    panel.run(sync=True)  # a valid run afterwards works and clears the error
    assert panel.last_error is None and panel.result is not None


def test_changing_only_steering_reuses_the_unsteered_clip(panel, model, monkeypatch):
    calls = []
    real = model.generate  # the panel samples with paired noise (noise id 0)

    def spy(*args, **kw):
        calls.append(kw.get("seed"))
        return real(*args, **kw)

    monkeypatch.setattr(model, "generate", spy)
    panel.run(sync=True)
    first = panel.result
    assert len(calls) == 2 and not first.unsteered_cached
    panel.strength.value = 2.5
    panel.branch.value = "uncond"
    panel.run(sync=True)
    assert len(calls) == 3 and panel.result.unsteered_cached
    assert panel.result.unsteered is first.unsteered
    panel.seed.value = 4  # a new clip: both generated again
    panel.run(sync=True)
    assert calls[3:] == [4, 4] and not panel.result.unsteered_cached


def test_panel_readout_equals_manual_projection(panel, model, vectors):
    panel.hooks.value = (H1, H2)
    panel.strength.value = 2.0
    panel.run(sync=True)
    res = panel.result
    assert res.readout_hook == H1  # default: the vector's direction at the first chosen hook
    v = vectors["two"][H1].double()
    v = v / v.norm()
    for version, out in (("unsteered", res.unsteered), ("steered", res.steered)):
        _, cache = model.run_with_cache(out.codes, [PROMPT], names_filter=[H1])
        proj = cache[H1][0].double() @ v
        t = cache.seconds
        want = [float(proj[(t >= k) & (t < k + 1)].mean()) for k in range(2)]
        got = res.readout[res.readout["version"] == version]["value"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    traces = panel.readout_plot.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"]
    steered = res.readout[res.readout["version"] == "steered"]["value"].to_numpy()
    assert traces[1]["name"] == "steered"
    np.testing.assert_allclose(_array(traces[1]["y"]), steered)


def test_custom_readout_at_its_own_hook(model, vectors):
    w = torch.zeros(model.d_model)
    w[0] = 1.0
    p = SteeringPanel(model, vectors, prompts=[PROMPT], duration=DURATION, readout=(H2, w))
    p.run(sync=True)
    _, cache = model.run_with_cache(p.result.steered.codes, [PROMPT], names_filter=[H2])
    t = cache.seconds
    want = [float(cache[H2][0, (t >= k) & (t < k + 1), 0].mean()) for k in range(2)]
    got = p.result.readout.query("version == 'steered'")["value"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_background_run_ignores_clicks_while_busy(panel, model):
    assert panel.run(sync=False)
    assert panel.run(sync=False) is False  # ignored, not queued
    assert "ignored" in panel.status.value
    assert panel.wait(timeout=120)
    assert panel.result is not None and panel.last_error is None
    assert no_hooks_attached(model) and not panel.generate_button.disabled


def test_controls_follow_vector_and_duration(panel, vectors):
    panel.direction.value = "one"
    assert panel.hooks.options == (H2,) and panel.hooks.value == (H2,)
    panel.duration.value = 4.0
    assert panel.window.max == 4.0 and panel.window.value == (0.0, 4.0)
    assert panel.settings().schedule == (0.0, None)
    panel.window.value = (1.0, 3.0)
    panel.duration.value = 2.5
    assert panel.window.value == (1.0, 2.5)
    s = panel.settings()
    assert (s.vector, s.hooks, s.duration, s.schedule, s.seed) == ("one", (H2,), 2.5, (1.0, None), 3)


def test_empty_prompt_generates_unconditionally(panel, model, vectors):
    panel.prompt.value = "   "
    panel.hooks.value = (H1,)
    panel.strength.value = 1.0
    assert panel.run(sync=True) and panel.last_error is None, panel.last_error
    s = panel.result.settings
    assert s.prompt is None
    plain = model.generate([None], DURATION, seed=s.seed, noise_ids=[0])
    assert torch.equal(panel.result.unsteered.codes, plain.codes)
    again = Steerer(model).set(vectors["two"], 1.0, hooks=[H1]).generate([None], DURATION, seed=s.seed, noise_ids=[0])
    assert torch.equal(panel.result.steered.codes, again.codes)
    assert panel.result.readout is not None and no_hooks_attached(model)


def test_static_copies_get_a_note_and_a_saved_run(panel):
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "run the cells above" in bundle["text/plain"]
    with pytest.raises(ValueError, match="no run yet"):
        panel.snapshot()
    panel.run(sync=True)
    snap = panel.snapshot()
    page = snap._repr_html_()
    assert page.count("<audio") == 2 and page.count("<figcaption") == 2
    assert "unsteered (same prompt and seed)" in page and "steered toward two" in page
    assert f"seed {panel.result.settings.seed}" in snap.settings_text()
