"""Helpers for looking at models and results (model.inspect, ui.tables, probe readouts, label
shares, first differences), each checked against an independent reference."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import mstools
from mstools.analysis import probes
from mstools.analysis.readout import probe_readout
from mstools.evaluation import first_difference, label_shares
from mstools.model.inspect import backend_gap, hook_shapes, text_conditioner, time_generation
from mstools.ui.tables import delay_table


@pytest.fixture(scope="module", params=["audiocraft", "transformers"])
def tiny(request):
    return mstools.build_musicgen("tiny", seed=0, backend=request.param)


@pytest.fixture(scope="module")
def testbeds():
    return {b: mstools.load_musicgen("testbed", backend=b) for b in ("audiocraft", "transformers")}


def test_delay_table_matches_audiocrafts_pattern(tiny):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, tiny.card, (1, tiny.num_codebooks, 7), generator=g)
    seq = tiny.to_sequence(codes)[0]  # the backend's own delay pattern
    table = delay_table(tiny.num_codebooks, 7)
    assert table.shape == tuple(seq.shape)
    special = tiny.special_token_id
    for k in range(tiny.num_codebooks):
        for s in range(seq.shape[1]):
            f = int(table.iloc[k, s])
            if f < 0:
                assert int(seq[k, s]) == special
            else:
                assert int(seq[k, s]) == int(codes[0, k, f])


def test_delay_table_rejects_bad_names():
    with pytest.raises(ValueError, match="codebook names"):
        delay_table(4, 3, ["a", "b"])


def test_hook_shapes_match_a_built_model(tiny):
    table = hook_shapes("tiny", batch=2, steps=5).set_index("name")
    assert list(table.index) == tiny.hook_names
    codes = torch.zeros(2, tiny.num_codebooks, 3, dtype=torch.long)  # S = 3 + K - 1 = 6
    _, cache = tiny.run_with_cache(codes, ["a", "b"])
    S = codes.shape[-1] + tiny.num_codebooks - 1
    for name, shape in table["shape"].items():
        want = list(shape)
        want[2 if name == "hook_logits" else 1] = S
        assert tuple(cache[name].shape) == tuple(want), name


def test_held_out_predictions_reproduce_the_sweep():
    g = torch.Generator().manual_seed(1)
    n = 120
    y = np.array(["a", "b", "c"] * (n // 3))
    centers = torch.randn(3, 8, generator=g) * 0.5
    index = torch.tensor(pd.Series(y).map({"a": 0, "b": 1, "c": 2}).to_numpy().copy())
    X = centers[index] + torch.randn(n, 8, generator=g)
    labels = pd.DataFrame({"clip": range(n), "genre": y})
    for method in ("logistic", "ridge"):
        yt, yp = probes.held_out_predictions(X, labels, "genre", method, seed=3)
        # the held-out rows are those of the sweep's split
        _, te = probes.group_split(labels["clip"].to_numpy(), y, 0.25, 3)
        assert yt.tolist() == y[te].tolist()
        sweep = probes.probe_sweep({"h": X}, labels, ["genre"], (method,), seeds=(3,), controls=())
        assert float((yt == yp).mean()) == pytest.approx(float(sweep["accuracy"].iloc[0]), abs=1e-9)
        assert 0.5 < float((yt == yp).mean()) < 1.0  # a real, imperfect task


def test_label_shares_equal_a_crosstab():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"trial": rng.choice(["x", "y"], 50), "control": rng.choice(["none", "random"], 50),
                       "genre": rng.choice(["jazz", "rock", "none"], 50)})
    got = label_shares(df, "genre")
    want = pd.crosstab([df["trial"], df["control"]], df["genre"], normalize="index")
    for key in want.index:
        for col in want.columns:
            assert got.loc[key, col] == pytest.approx(want.loc[key, col])
    assert np.allclose(got.sum(axis=1), 1.0)
    with pytest.raises(KeyError, match="not in the table"):
        label_shares(df, "tempo")


def test_first_difference_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 4, (5, 4, 12), generator=g)
    b = a.clone()
    b[1, 3, 9] += 1
    b[2, 0, 0] += 1
    b[4, 1, 5] += 1
    b[4, 2, 3] += 1
    got = first_difference(a, b, frame_rate=4.0)
    for i in range(5):
        diff = [t for t in range(12) if not torch.equal(a[i, :, t], b[i, :, t])]
        want = diff[0] / 4.0 if diff else math.inf
        assert got[i].item() == want
    with pytest.raises(ValueError):
        first_difference(a, b[:, :, :5], 4.0)


def test_time_generation_counts_steps(tiny):
    r = time_generation(tiny, seconds=0.4, batch=2)
    frames = round(0.4 * tiny.frame_rate)
    assert r["steps"] == frames + tiny.num_codebooks - 1
    assert r["seconds_per_step"] > 0 and r["compute_per_audio_second"] == pytest.approx(
        r["seconds_per_step"] * r["steps"] / 0.4)


def test_probe_readout_gives_probabilities_that_agree_with_the_probe():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(90, 6, generator=g)
    labels = pd.DataFrame({"clip": range(90), "genre": ["jazz", "rock", "pop"] * 30})
    probe = probes.fit_probes({"blocks.0.hook_resid_post": X}, labels, "genre", "logistic")["blocks.0.hook_resid_post"]
    r = probe_readout(probe)
    P = r(X)
    assert P.shape == (90, 3) and np.allclose(P.sum(1), 1.0)
    assert r.classes == probe.classes and r.hook == "blocks.0.hook_resid_post"
    want = torch.softmax(X.double() @ probe.weight.double() + probe.bias.double(), -1).numpy()
    assert np.allclose(P, want, atol=1e-6)
    assert (np.asarray(r.classes)[P.argmax(1)] == probe.predict(X)).all()
    cont = probes.fit_probes({"h": X}, labels.assign(bpm=np.linspace(60, 180, 90)), "bpm")["h"]
    with pytest.raises(ValueError, match="classification"):
        probe_readout(cont)


def test_backend_gap_equals_a_manual_comparison(testbeds):
    ac, hf = testbeds["audiocraft"], testbeds["transformers"]
    codes, prompts = ac.reference_clips(2, 2.0)
    gap = backend_gap(ac, hf, codes, prompts, names_filter="blocks.*.hook_resid_post")
    assert list(gap.index) == ["logits"] + ac.check_names("blocks.*.hook_resid_post")
    manual = (ac(codes, prompts).double() - hf(codes, prompts).double()).abs().max().item()
    assert gap.loc["logits", "max_abs_diff"] == pytest.approx(manual, rel=1e-9, abs=1e-12)
    assert gap["max_abs_diff"].max() < 1e-4  # one model on two backends
    h = "blocks.1.hook_resid_post"
    _, cache = ac.run_with_cache(codes, prompts, names_filter=h)
    assert gap.loc[h, "scale"] == pytest.approx(cache[h].abs().max().item())
    assert gap.loc[h, "shape"] == tuple(cache[h].shape)


def test_backend_gap_sees_a_different_model(testbeds):
    ac = testbeds["audiocraft"]
    codes, prompts = ac.reference_clips(2, 2.0)
    untrained = mstools.load_musicgen("testbed-untrained", backend="transformers")
    gap = backend_gap(ac, untrained, codes, prompts, names_filter="hook_embed")
    manual = (ac(codes, prompts) - untrained(codes, prompts)).abs().max().item()
    assert gap.loc["logits", "max_abs_diff"] == pytest.approx(manual, rel=1e-5) and manual > 1.0
    with pytest.raises(ValueError, match="different hook names"):
        backend_gap(ac, mstools.build_musicgen("tiny"), codes, prompts)


def test_untrained_testbed_is_one_model_on_both_backends(testbeds):
    ac, hf = (mstools.load_musicgen("testbed-untrained", backend=b) for b in ("audiocraft", "transformers"))
    assert (ac.backend_name, hf.backend_name) == ("audiocraft", "transformers")
    assert ac.fingerprint == hf.fingerprint != testbeds["audiocraft"].fingerprint
    from mstools.testbed import build_testbed_musicgen
    ref = build_testbed_musicgen(seed=0).lm.state_dict()  # the reference random weights
    assert all(torch.equal(v, ref[k]) for k, v in ac.lm.state_dict().items())
    codes, prompts = testbeds["audiocraft"].reference_clips(2, 2.0)
    torch.testing.assert_close(hf(codes, prompts), ac(codes, prompts), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown backend"):
        mstools.load_musicgen("testbed-untrained", backend="jax")


def test_text_conditioner_names_the_backends_encoder(testbeds):
    assert text_conditioner(testbeds["audiocraft"]) == "description: T5TextConditioner (audiocraft)"
    hf = text_conditioner(testbeds["transformers"])
    assert hf == "T5EncoderModel + enc_to_dec_proj (transformers encoder_hidden_states)"
    t5 = text_conditioner(mstools.build_musicgen("tiny", backend="transformers"))
    assert t5.startswith("T5EncoderModel")
