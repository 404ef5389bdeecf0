"""Pooling over time, checked against explicit loops over steps (an independent reference)."""
import math

import numpy as np
import pytest
import torch

from mstools.data.pooling import POOLING_MODES, Pooling, pool

K, RATE = 4, 10.0


def _acts(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _manual_mean(acts, keep):
    """Mean over the S positions where keep[s] is True, by an explicit float64 numpy loop."""
    a = acts.double().numpy()
    total = np.zeros(a.shape[:1] + a.shape[2:])
    n = 0
    for s in range(a.shape[1]):
        if keep[s]:
            total += a[:, s]
            n += 1
    return torch.from_numpy(total / n)


@pytest.mark.parametrize("shape", [(3, 12, 8), (2, 12, 4, 2)])  # resid [B,S,D] and hook_z [B,S,H,D/H]
def test_mean_over_all_steps(shape):
    acts = _acts(shape)
    out = pool(acts, torch.arange(shape[1]), "mean")
    assert out.shape == shape[:1] + shape[2:]
    assert out.dtype == acts.dtype
    torch.testing.assert_close(out.double(), _manual_mean(acts, [True] * shape[1]), rtol=0, atol=1e-6)


def test_window_selects_steps_by_seconds_not_by_index():
    # cache starting at step 3: index i holds step i + 3, so times are (i + 3) / RATE
    steps = torch.arange(3, 15)
    acts = _acts((2, 12, 5), seed=1)
    keep = [0.5 <= int(s) / RATE < 1.0 for s in steps]          # steps 5..9 -> indices 2..6
    assert sum(keep) == 5
    want = _manual_mean(acts, keep)
    for how in ("window", "mean"):
        out = pool(acts, steps, how, frame_rate=RATE, window=(0.5, 1.0))
        torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-6)
    # half-open: the step exactly at t1 = 1.0 s (step 10) is left out, the one at t0 kept
    only_t0 = pool(acts, steps, "window", frame_rate=RATE, window=(0.5, 0.6))
    torch.testing.assert_close(only_t0, acts[:, 2])


def test_last_takes_the_largest_step_inside_the_window():
    acts = _acts((2, 6, 3), seed=2)
    steps = torch.tensor([4, 0, 5, 1, 3, 2])                    # positions need not be sorted
    assert torch.equal(pool(acts, steps, "last"), acts[:, 2])   # step 5 sits at position 2
    # window [0, 0.35) s at 10 fps holds steps 0..3; the largest, 3, sits at position 4
    assert torch.equal(pool(acts, steps, "last", frame_rate=RATE, window=(0.0, 0.35)), acts[:, 4])


def test_frame_row_f_is_the_activation_at_step_f_plus_k_minus_1():
    S = 13
    steps = torch.arange(S)
    acts = _acts((2, S, 4, 3), seed=3)
    out = pool(acts, steps, "frame", num_codebooks=K)
    frames = S - K + 1                                          # steps 0..12 complete frames 0..9
    assert out.shape == (2, frames, 4, 3)
    for f in range(frames):
        assert torch.equal(out[:, f], acts[:, f + K - 1])
    # a cache missing the early steps cannot give frame 0: the error says which step is missing
    with pytest.raises(ValueError, match="frame 0 needs step 3"):
        pool(acts[:, 4:], torch.arange(4, S), "frame", num_codebooks=K)


def test_float16_mean_is_accumulated_in_float32():
    acts = (_acts((1, 400, 4), seed=4) + 100.0).half()
    out = pool(acts, torch.arange(400), "mean")
    assert out.dtype == torch.float16
    want = _manual_mean(acts, [True] * 400).half()
    assert torch.equal(out, want)


def test_errors_say_what_to_do():
    acts, steps = _acts((1, 12, 2)), torch.arange(12)
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        pool(acts, steps, "median")
    with pytest.raises(ValueError, match=r"holds no cached step.*\[0, 1.1\] s"):
        pool(acts, steps, "window", frame_rate=RATE, window=(5.0, 6.0))
    with pytest.raises(ValueError, match="needs window"):
        pool(acts, steps, "window", frame_rate=RATE)
    with pytest.raises(ValueError, match="needs frame_rate"):
        pool(acts, steps, "mean", window=(0.0, 1.0))
    with pytest.raises(ValueError, match="needs num_codebooks"):
        pool(acts, steps, "frame")
    with pytest.raises(ValueError, match="takes no window"):
        pool(acts, steps, "frame", num_codebooks=K, window=(0.0, 1.0))
    with pytest.raises(ValueError, match="t0 < t1"):
        Pooling("window", (1.0, 1.0))
    with pytest.raises(ValueError, match="one step per position"):
        pool(acts, torch.arange(11), "mean")


@pytest.mark.parametrize("p", [Pooling(), Pooling("last"), Pooling("frame"),
                               Pooling("window", (0.25, 2.0)), Pooling("mean", (1.0, math.inf))])
def test_pooling_json_round_trip(p):
    import json
    data = json.loads(json.dumps(p.to_json(), allow_nan=False))   # strict JSON: no Infinity
    assert Pooling.from_json(data) == p
    assert p.how in POOLING_MODES


def test_pooling_object_applies_its_mode():
    acts, steps = _acts((2, 12, 3), seed=5), torch.arange(12)
    p = Pooling("window", (0.2, 0.5))
    assert torch.equal(p(acts, steps, frame_rate=RATE),
                       pool(acts, steps, "window", frame_rate=RATE, window=(0.2, 0.5)))
    assert Pooling("frame").per_frame and not Pooling("mean").per_frame
