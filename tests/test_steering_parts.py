"""Steering vectors, operators and schedules, each checked against a hand computation."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from mstools.steering.operators import (
    ablate_operator,
    add_operator,
    get_operator,
    seed_mix_operator,
    set_projection_operator,
)
from mstools.steering.schedules import (
    Schedule,
    as_schedule,
    constant,
    crossfade,
    decay,
    from_callable,
    periodic,
    window,
)
from mstools.steering.vector import SteeringVector, check_strength

torch.set_num_threads(1)

B, S, D, H = 3, 5, 8, 2
FP = "testbed-abc123"


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _strength(gen: torch.Generator) -> torch.Tensor:
    """[B, S, 1] strengths with a few exact zeros."""
    a = torch.randn(B, S, 1, generator=gen).abs() + 0.1
    a[0, 1] = 0.0
    a[2, 4] = 0.0
    return a


# ------------------------------------------------------------------------------ operators
def _rows(h: torch.Tensor) -> np.ndarray:
    return h.double().numpy().reshape(-1, h.shape[-1])


def test_add_matches_formula(gen):
    h, v, a = torch.randn(B, S, D, generator=gen), torch.randn(D, generator=gen), _strength(gen)
    out = add_operator()(h, v, a)
    hr, ar, vr = _rows(h), a.double().numpy().reshape(-1), v.double().numpy()
    expected = np.stack([hr[i] + ar[i] * vr for i in range(len(hr))]).reshape(B, S, D)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_seed_mix_matches_paper_formula(gen):
    h, v, a = torch.randn(B, S, D, generator=gen), torch.randn(D, generator=gen) * 3, _strength(gen)
    out = seed_mix_operator()(h, v, a)
    hr, ar, vr = _rows(h), a.double().numpy().reshape(-1), v.double().numpy()
    vhat = vr / math.sqrt(sum(x * x for x in vr))
    expected = []
    for row, ai in zip(hr, ar):
        norm = math.sqrt(sum(x * x for x in row))
        expected.append((row + ai * norm * vhat) / (1 + ai))
    np.testing.assert_allclose(out.numpy(), np.stack(expected).reshape(B, S, D), rtol=1e-5, atol=1e-6)


def test_ablate_removes_projection(gen):
    h, v = torch.randn(B, S, D, generator=gen), torch.randn(D, generator=gen) * 5
    a = torch.full((B, S, 1), 0.25)
    out = ablate_operator()(h, v, a)
    vhat = v.double().numpy() / np.linalg.norm(v.double().numpy())
    hr = _rows(h)
    expected = np.stack([r - 0.25 * (r @ vhat) * vhat for r in hr]).reshape(B, S, D)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    full = ablate_operator()(h, v, 1.0)
    np.testing.assert_allclose(_rows(full) @ vhat, 0.0, atol=1e-5)


def test_set_projection_sets_and_blends(gen):
    h, v = torch.randn(B, S, D, generator=gen), torch.randn(D, generator=gen)
    vhat = v.double().numpy() / np.linalg.norm(v.double().numpy())
    op = set_projection_operator(target=3.0)
    np.testing.assert_allclose(_rows(op(h, v, 1.0)) @ vhat, 3.0, rtol=1e-5)
    half = _rows(op(h, v, 0.5))
    expected = np.stack([r + 0.5 * (3.0 - r @ vhat) * vhat for r in _rows(h)])
    np.testing.assert_allclose(half, expected, rtol=1e-5, atol=1e-6)
    # the part orthogonal to v is untouched
    orth = lambda x: x - np.outer(x @ vhat, vhat)  # noqa: E731
    np.testing.assert_allclose(orth(half), orth(_rows(h)), atol=1e-5)


@pytest.mark.parametrize("make", [add_operator, seed_mix_operator, ablate_operator,
                                  lambda: set_projection_operator(2.0)])
def test_zero_strength_is_bit_identical_and_h_untouched(make, gen):
    op = make()
    h, v, a = torch.randn(B, S, D, generator=gen), torch.randn(D, generator=gen), _strength(gen)
    before = h.clone()
    out = op(h, v, a)
    assert torch.equal(h, before), "operator modified h in place"
    zero = (a[..., 0] == 0)
    assert torch.equal(out[zero], h[zero])
    assert not torch.equal(out[~zero], h[~zero])
    # bit-level identity even where the formula alone would not give it: -0.0 and inf entries
    h[0, 1, :3] = torch.tensor([-0.0, float("inf"), -0.0])
    out = op(h, v, a)
    assert torch.equal(out[zero].view(torch.int32), h[zero].view(torch.int32))
    assert op(h, v, 0.0) is h
    assert op(h, v, torch.zeros(B, S, 1)) is h
    half = h.half()
    assert torch.equal(op(half, v.half(), torch.zeros(B, S, 1)), half)


@pytest.mark.parametrize("make", [add_operator, seed_mix_operator, ablate_operator,
                                  lambda: set_projection_operator(-1.0)])
def test_head_level_direction_equals_flattened(make, gen):
    """hook_z [B, S, H, Dh] with v [H, Dh] acts like the flattened [B, S, H*Dh] row."""
    op = make()
    h, v = torch.randn(B, S, H, D, generator=gen), torch.randn(H, D, generator=gen)
    a = _strength(gen)
    out = op(h, v, a[..., None])
    flat = op(h.reshape(B, S, H * D), v.reshape(H * D), a)
    torch.testing.assert_close(out.reshape(B, S, H * D), flat)
    with pytest.raises(ValueError, match="strength of shape"):
        op(h, v, a)  # [B, S, 1] would broadcast S against H


def test_low_precision_keeps_dtype(gen):
    h, v = torch.randn(B, S, D, generator=gen) * 100, torch.randn(D, generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        out = seed_mix_operator()(h.to(dtype), v.to(dtype), 0.5)
        ref = seed_mix_operator()(h.to(dtype).float(), v.to(dtype).float(), 0.5)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-1)


def test_operator_refusals(gen):
    h, v = torch.randn(B, S, D, generator=gen), torch.randn(D, generator=gen)
    with pytest.raises(ValueError, match="> -1"):
        seed_mix_operator()(h, v, -1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        add_operator()(h, v, torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="does not match"):
        add_operator()(h, torch.randn(D + 1), 1.0)
    with pytest.raises(ValueError, match="all zeros"):
        ablate_operator()(h, torch.zeros(D), 1.0)
    with pytest.raises(ValueError, match="finite"):
        set_projection_operator(float("inf"))
    with pytest.raises(ValueError, match="unknown operator"):
        get_operator("multiply")


def test_operator_names():
    assert repr(get_operator("set_projection", target=2.0)) == "set_projection(target=2.0)"
    assert [repr(get_operator(n)) for n in ("add", "seed_mix", "ablate")] == \
        ["add()", "seed_mix()", "ablate()"]


# ------------------------------------------------------------------------------ schedules
def _time(steps: list[int], frame_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.tensor(steps, dtype=torch.long)
    return (s / frame_rate).float(), s


def test_window_values_at_chosen_steps():
    secs, steps = _time([249, 250, 251, 299, 300, 1000], 50.0)
    assert window(5.0, 6.0)(secs, steps).tolist() == [0, 1, 1, 1, 0, 0]
    assert window(5.0, None)(secs, steps).tolist() == [0, 1, 1, 1, 1, 1]
    # float32 time of step 7 at 10 Hz is 0.69999999: still inside a window that starts at 0.7
    secs, steps = _time([6, 7, 8], 10.0)
    assert window(0.7, 0.8)(secs, steps).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="after its start"):
        window(2.0, 1.0)


def test_periodic_rule():
    secs, steps = _time(list(range(100)), 50.0)
    for every, phase, width in [(25, 0, 1), (7, 3, 2), (4, -1, 4)]:
        w = periodic(every, phase, width)(secs, steps).tolist()
        assert w == [1.0 if (s - phase) % every < width else 0.0 for s in range(100)]
    # the released seed hook (one layer, offset 0, decoder-only generate) steers steps 24, 49, 74, 99:
    # periodic(25, phase=24), not periodic(25) (tests/test_seed_mode.py checks it on a real generate)
    assert periodic(25, phase=24)(secs, steps).nonzero().flatten().tolist() == [24, 49, 74, 99]
    with pytest.raises(ValueError, match="cannot exceed"):
        periodic(3, width=4)


def test_decay_values():
    secs, steps = _time([0, 10, 20, 30, 40], 10.0)  # 0..4 s
    w = decay(0.5, start=1.0)(secs, steps).tolist()
    assert w == pytest.approx([0.0, 1.0, 0.5, 0.25, 0.125])
    w = decay(0.5, floor=0.3, start=1.0)(secs, steps).tolist()
    assert w == pytest.approx([0.0, 1.0, 0.5, 0.3, 0.3])
    w = decay(0.9, per="step", start=10)(secs, steps).tolist()
    assert w == pytest.approx([0.0, 1.0, 0.9 ** 10, 0.9 ** 20, 0.9 ** 30])
    with pytest.raises(ValueError, match="gamma must be > 0"):
        decay(0.0)


def test_crossfade_ramps_and_sums_to_one():
    secs, steps = _time(list(range(0, 60)), 10.0)  # 0..5.9 s
    w_a, w_b = crossfade(2.0, 4.0)
    a, b = w_a(secs, steps), w_b(secs, steps)
    torch.testing.assert_close(a + b, torch.ones(60), rtol=0, atol=1e-6)
    expected_b = [min(max((s / 10 - 2.0) / 2.0, 0.0), 1.0) for s in range(60)]
    assert b.tolist() == pytest.approx(expected_b, abs=1e-6)
    assert (b[:21] == 0).all() and (b[40:] == 1).all() and b[30].item() == pytest.approx(0.5)
    assert (repr(w_a), repr(w_b)) == ("crossfade(2.0, 4.0).a", "crossfade(2.0, 4.0).b")


def test_from_callable_and_as_schedule():
    secs, steps = _time([0, 5, 13], 10.0)
    f = lambda t: math.cos(t) ** 2  # noqa: E731
    expected = [math.cos(t) ** 2 for t in secs.double().tolist()]
    assert from_callable(f)(secs, steps).tolist() == pytest.approx(expected, rel=1e-6)
    vec = from_callable(lambda t: torch.cos(t) ** 2, vectorized=True, name="cos2")
    assert vec(secs, steps).tolist() == pytest.approx(expected, rel=1e-6)
    assert repr(vec) == "from_callable(cos2)"
    with pytest.raises(ValueError, match="NaN or infinite"):
        from_callable(lambda t: float("nan"))(secs, steps)
    with pytest.raises(TypeError, match="must return a number"):
        from_callable(lambda t: "loud")(secs, steps)

    assert as_schedule(None)(secs, steps).tolist() == [1, 1, 1]
    assert as_schedule(0.5)(secs, steps).tolist() == [0.5, 0.5, 0.5]
    assert as_schedule((0.5, None))(secs, steps).tolist() == [0, 1, 1]
    assert as_schedule(f)(secs, steps).tolist() == pytest.approx(expected, rel=1e-6)
    s = periodic(2)
    assert as_schedule(s) is s
    with pytest.raises(TypeError, match="cannot make a schedule"):
        as_schedule("always")
    assert [repr(as_schedule(x)) for x in (None, 2, (1, 3))] == \
        ["constant(1.0)", "constant(2.0)", "window(1.0, 3.0)"]


def test_product_and_shape_checks():
    secs, steps = _time(list(range(10)), 2.0)
    prod = window(2.0) * periodic(2) * 0.5
    assert isinstance(prod, Schedule)
    assert prod(secs, steps).tolist() == [0.5 if (s >= 4 and s % 2 == 0) else 0.0 for s in range(10)]
    assert repr(prod) == "window(2.0, None) * periodic(every=2, phase=0, width=1) * constant(0.5)"
    out = constant(1.0)(secs, steps)
    assert out.dtype == torch.float32 and out.shape == (10,)
    with pytest.raises(ValueError, match="same length"):
        constant()(secs, steps[:3])


# ------------------------------------------------------------------------------ vectors
def _vec(gen, fp=FP, **kw) -> SteeringVector:
    return SteeringVector({"blocks.0.hook_resid_post": torch.randn(D, generator=gen),
                           "blocks.1.attn.hook_z": torch.randn(H, D, generator=gen)}, fp, **kw)


def test_arithmetic_per_hook(gen):
    a = _vec(gen, source="A")
    b = SteeringVector({"blocks.0.hook_resid_post": torch.randn(D, generator=gen),
                        "blocks.2.hook_mlp_out": torch.randn(D, generator=gen)}, FP, source="B")
    r, z, m = "blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.2.hook_mlp_out"
    s = a + b
    assert set(s.hooks) == {r, z, m}
    assert torch.equal(s[r], a[r] + b[r]) and torch.equal(s[z], a[z]) and torch.equal(s[m], b[m])
    d = a - b
    assert torch.equal(d[r], a[r] - b[r]) and torch.equal(d[z], a[z]) and torch.equal(d[m], -b[m])
    assert torch.equal((-a)[z], -a[z])
    assert torch.equal((0.5 * a)[z], a[z] * 0.5) and torch.equal((a * 0.5)[r], a[r] * 0.5)
    assert torch.equal((a / 3)[r], a[r] / 3)
    assert torch.equal(sum([a, b])[r], (a + b)[r])
    assert (a + b).source == "A + B" and (a - 0.5 * b).source == "A - 0.5*B"
    assert (-(a + b)).source == "-(A + B)" and (a / 2).source == "A/2"
    assert (a + b).fingerprint == FP and (a + b).units == "raw"
    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(ValueError, match="finite"):
        a * float("nan")


def test_arithmetic_refuses_mismatches(gen):
    a, other = _vec(gen, source="A"), _vec(gen, fp="musicgen-small-xyz", source="C")
    with pytest.raises(ValueError, match="different models.*testbed-abc123.*musicgen-small-xyz"):
        a + other
    bad = SteeringVector({"blocks.0.hook_resid_post": torch.randn(D + 1)}, FP)
    with pytest.raises(ValueError, match="shape"):
        a - bad


def test_normalized(gen):
    raw = _vec(gen)
    v = raw.normalized()
    assert v.units == "unit"
    for hook in raw.hooks:  # each direction divided by its own L2 (Frobenius) norm
        ref = raw[hook].double().numpy() / np.linalg.norm(raw[hook].double().numpy().ravel())
        np.testing.assert_allclose(v[hook].numpy(), ref, rtol=1e-6)
    assert (-v).units == "unit" and (2 * v).units == "raw"
    with pytest.raises(ValueError, match="normalized"):
        SteeringVector({"hook_embed": torch.ones(4)}, FP, units="unit")
    with pytest.raises(ValueError, match="all zeros"):
        SteeringVector({"hook_embed": torch.zeros(4)}, FP).normalized()


def test_save_load_round_trip_bit_exact(gen, tmp_path):
    v = SteeringVector({"blocks.0.hook_resid_post": torch.randn(D, generator=gen),
                        "blocks.1.attn.hook_z": torch.randn(H, D, generator=gen).half(),
                        "blocks.2.hook_mlp_out": torch.randn(D, generator=gen).bfloat16(),
                        "hook_embed": torch.randn(D, generator=gen).double()},
                       FP, source="diff_means:genre=jazz-vs-rest", units="raw",
                       meta={"layer": 3, "labels": ["jazz", "rest"], "n": [40, 120]})
    path = tmp_path / "sub" / "jazz.safetensors"
    assert v.save(path) == path
    assert os.listdir(path.parent) == ["jazz.safetensors"]  # no temp file left behind
    w = SteeringVector.load(path)
    assert (w.fingerprint, w.source, w.units, w.meta) == (v.fingerprint, v.source, v.units, v.meta)
    assert set(w.hooks) == set(v.hooks)
    for hook in v.hooks:
        assert w[hook].dtype == v[hook].dtype and torch.equal(w[hook], v[hook]), hook
    v.normalized().save(path)  # overwrite in place
    assert SteeringVector.load(path).units == "unit"


def test_load_refuses_corrupt_and_foreign_files(gen, tmp_path):
    good = tmp_path / "v.safetensors"
    _vec(gen).save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:40])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    for bad in (truncated, garbage):
        with pytest.raises(ValueError, match="corrupt"):
            SteeringVector.load(bad)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(foreign))
    with pytest.raises(ValueError, match="not an mstools steering vector file"):
        SteeringVector.load(foreign)
    with pytest.raises(FileNotFoundError):
        SteeringVector.load(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="JSON"):
        SteeringVector({"hook_embed": torch.ones(2)}, FP, meta={"x": object()}).save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_check_refuses_other_model_size_and_unknown_hook(gen):
    v = _vec(gen, source="A")
    shapes = {"blocks.0.hook_resid_post": (D,), "blocks.1.attn.hook_z": (H, D),
              "blocks.1.hook_resid_post": (D,)}
    v.check(FP, shapes)  # fits
    with pytest.raises(ValueError, match="made for model 'testbed-abc123', not for 'other-model'"):
        v.check("other-model", shapes)
    with pytest.raises(ValueError, match=r"'blocks.1.attn.hook_z': expected .*\(2, 4\), got \(2, 8\)"):
        v.check(FP, {**shapes, "blocks.1.attn.hook_z": (H, 4)})
    lost = {k: s for k, s in shapes.items() if k != "blocks.1.attn.hook_z"}
    with pytest.raises(ValueError, match="unknown hook.*'blocks.1.attn.hook_z'"):
        v.check(FP, lost)


def test_check_strength():
    assert check_strength(2) == 2.0 and isinstance(check_strength(np.float32(0.5)), float)
    assert check_strength(torch.tensor(1.5)) == 1.5
    sweep = check_strength(torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(sweep, torch.tensor([0.0, 1.0, 2.0]))
    for bad in (float("nan"), float("inf"), -math.inf, torch.tensor([1.0, float("nan")]),
                np.array([0.0, np.inf])):
        with pytest.raises(ValueError, match="finite"):
            check_strength(bad)
    for bad in (None, "1.0", True, 1 + 2j, [1.0]):
        with pytest.raises(TypeError, match="real number"):
            check_strength(bad)
    assert SteeringVector.check_strength(3) == 3.0
