"""Activation patching: references are plain forward passes of the library, never the patch hooks."""
import pandas as pd
import pytest
import torch

from conftest import plain_logits, tiny_model

from mstools.analysis.patching import (Patch, clean_logprob, generative_sweep, head_patches,
                                       layer_time_patches, patch_sweep, run_patched)
from mstools.core.names import UnknownHookError
from mstools.ui.plots import patching_heatmap

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_model("audiocraft")


@pytest.fixture(scope="module")
def pair(model):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.card, (2, model.num_codebooks, 12), generator=g)
    corrupted = torch.randint(0, model.card, (2, model.num_codebooks, 12), generator=g)
    return clean, corrupted


def _no_hooks_left(model) -> bool:
    points = all(not hp.fwd_hooks for hp in model.hook_dict.values())
    modules = all(not m._forward_hooks and not m._forward_pre_hooks for m in model.lm.modules())
    return points and modules


def test_patch_everything_at_first_layer_input_gives_clean_logits(model, pair):
    clean, corrupted = pair
    logits = run_patched(model, clean, corrupted, [Patch("blocks.0.hook_resid_pre")],
                         clean_prompts="jazz", corrupted_prompts="jazz")
    assert torch.equal(logits[2], plain_logits(model, clean, ["jazz"] * 2))


def test_patch_nothing_gives_corrupted_logits(model, pair):
    clean, corrupted = pair
    # a span after the last step patches nothing
    logits = run_patched(model, clean, corrupted, [Patch("blocks.1.hook_resid_post", 100.0, None)],
                         clean_prompts="jazz", corrupted_prompts="jazz")
    ref = plain_logits(model, corrupted, ["jazz"] * 2)
    assert torch.equal(logits[2], ref) and torch.equal(logits[1], ref)


def test_prompt_corruption_patch_of_every_cross_attention_gives_clean(model, pair):
    # the prompt reaches the codes only through cross-attention: patch all of it in one block
    from mstools.analysis.patching import _copy_fn
    clean, _ = pair
    hooks = [(f"blocks.{l}.hook_cross_attn_out",
              _copy_fn([(2, Patch(f"blocks.{l}.hook_cross_attn_out"))], block=2, n_blocks=3))
             for l in range(model.num_layers)]
    with torch.no_grad(), model.hooks(hooks):
        logits = model(torch.cat([clean, clean, clean]), ["jazz"] * 2 + ["rock"] * 4)
    assert torch.equal(logits[4:], plain_logits(model, clean, ["jazz"] * 2))


def test_batched_sweep_equals_patch_by_patch(model, pair):
    clean, corrupted = pair
    patches = layer_time_patches(model, window=0.2, duration=0.6) + head_patches(model, t0=0.1)
    batched = patch_sweep(model, clean, corrupted, patches=patches, clean_prompts="jazz",
                          corrupted_prompts="jazz", max_batch=64)
    lp_clean = clean_logprob(model, plain_logits(model, clean, ["jazz"] * 2), clean).mean()
    lp_corr = clean_logprob(model, plain_logits(model, corrupted, ["jazz"] * 2), clean).mean()
    for i, p in enumerate(patches):
        single = run_patched(model, clean, corrupted, [p], clean_prompts="jazz",
                             corrupted_prompts="jazz")[2]
        lp = clean_logprob(model, single, clean).mean()
        expect = float((lp - lp_corr) / (lp_clean - lp_corr))
        assert batched.loc[i, "metric"] == pytest.approx(expect, abs=1e-5)
    assert list(batched.columns[:6]) == ["hook", "layer", "t0", "t1", "head", "metric"]
    # chunks of few rows give the same table
    small = patch_sweep(model, clean, corrupted, patches=patches, clean_prompts="jazz",
                        corrupted_prompts="jazz", max_batch=6)
    assert torch.allclose(torch.tensor(small["metric"].values), torch.tensor(batched["metric"].values),
                          atol=1e-5)


def test_head_patch_touches_only_its_heads(model, pair):
    clean, corrupted = pair
    seen = {}

    def record(x, hook):
        seen["z"] = x.detach().clone()
    p = Patch("blocks.1.attn.hook_z", None, None, (1,))
    from mstools.analysis.patching import patch_hooks
    hooks = patch_hooks(model, [p], 2) + [("blocks.1.attn.hook_z", record)]
    with torch.no_grad(), model.hooks(hooks):
        model(torch.cat([clean, corrupted, corrupted]), ["jazz"] * 6)
    z = seen["z"]
    assert torch.equal(z[4:, :, 1], z[:2, :, 1])          # head 1 from the clean block
    assert torch.equal(z[4:, :, 0], z[2:4, :, 0])         # other heads corrupted


def test_hooks_removed_after_exception(model, pair):
    clean, corrupted = pair
    bad = torch.full_like(corrupted, model.card + 5)
    with pytest.raises(ValueError):
        run_patched(model, clean, bad, [Patch("blocks.0.hook_resid_post")])
    assert _no_hooks_left(model)

    def boom(x, hook):
        raise RuntimeError("boom")
    from mstools.analysis.patching import patch_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(patch_hooks(model, [Patch("blocks.0.hook_resid_post")], 2)
                         + [("blocks.1.hook_resid_post", boom)]):
            model(torch.cat([clean, corrupted, corrupted]), None)
    assert _no_hooks_left(model)


def test_errors(model, pair):
    clean, corrupted = pair
    with pytest.raises(UnknownHookError, match="Did you mean"):
        patch_sweep(model, clean, corrupted, patches=[Patch("blocks.0.hook_resid_psot")])
    with pytest.raises(ValueError, match="different lengths"):
        run_patched(model, clean, corrupted[..., :8], [Patch("blocks.0.hook_resid_post")])
    with pytest.raises(ValueError, match="heads"):
        run_patched(model, clean, corrupted, [Patch("blocks.0.hook_resid_post", heads=(0,))])
    with pytest.raises(ValueError, match="t0 < t1"):
        run_patched(model, clean, corrupted, [Patch("blocks.0.hook_resid_post", 1.0, 0.5)])
    with pytest.raises(ValueError, match="identical"):
        run_patched(model, clean, None, [Patch("blocks.0.hook_resid_post")])
    with pytest.raises(ValueError, match="cannot be patched"):
        run_patched(model, clean, corrupted, [Patch("hook_logits")])


def test_heatmap_shapes(model, pair):
    clean, corrupted = pair
    df = patch_sweep(model, clean, corrupted, patches=layer_time_patches(model, window=0.2, duration=0.6))
    fig = patching_heatmap(df, x="t0", y="layer")
    assert fig.data[0].z.shape == (model.num_layers, 3)


def _low_half_scorer(model, seen=None):
    """Codes [B, K, T] -> a "half" label per clip: whether most first-codebook tokens are below
    card / 2 (a deterministic reading of the codes; ``seen`` collects what it read)."""
    def score(codes):
        if seen is not None:
            seen.append(codes.clone())
        low = (codes[:, 0] < model.card // 2).float().mean(1) > 0.5
        return pd.DataFrame({"half": ["low" if x else "high" for x in low.tolist()]})
    return score


def test_generative_sweep_equals_a_patch_by_hand(model):
    """One patch: the sweep's hit rates equal one generate with a hand-written copy hook (rows of
    the clean block copied into the patched block inside the span, in the conditional and the
    unconditional half) scored from the end of the span."""
    b, hook, t0, t1, dur = 3, "blocks.0.hook_resid_post", 0.0, 0.4, 1.2
    clean, corrupt = ["jazz"] * b, ["rock"] * b
    scorer = _low_half_scorer(model)
    df = generative_sweep(model, clean, corrupt, patches=[Patch(hook, t0, t1)], duration=dur, factor="half",
                          target="low", seed=2, scorer=scorer)

    def by_hand(x, hook):
        inside = ((hook.clock.seconds >= t0) & (hook.clock.seconds < t1)).nonzero().squeeze(1)
        out = x.clone()
        for half in range(x.shape[0] // (3 * b)):           # conditional rows, then unconditional
            o = half * 3 * b
            out[o + 2 * b:o + 3 * b, inside] = x[o:o + b, inside]
        return out
    codes = model.generate(clean + corrupt + corrupt, dur, seed=2, fwd_hooks=[(hook, by_hand)],
                           decode=False).codes
    f0 = round(t1 * model.frame_rate)
    labels = scorer(codes[..., f0:])["half"].to_numpy().reshape(3, b)
    hit = (labels == "low").mean(axis=1)
    row = df.iloc[0]
    assert (row["hit_clean"], row["hit_corrupted"], row["hit"]) == tuple(float(h) for h in hit)
    expect = (hit[2] - hit[1]) / (hit[0] - hit[1]) if hit[0] != hit[1] else float("nan")
    assert hit[0] != hit[1] and row["metric"] == pytest.approx(expect)
    assert (row["layer"], row["t0"], row["t1"], row["n"]) == (0, t0, t1, b)


@pytest.mark.filterwarnings("ignore:the clean and corrupted runs score the same")  # codes, not labels, are compared
def test_generative_sweep_greedy_patch_everything_gives_clean_clips(model):
    """Greedy decoding: the last layer's output (all the output heads read) copied at every step
    gives the clean clips token for token; a span after the end gives the corrupted clips."""
    b, seen = 2, []
    scorer = _low_half_scorer(model, seen)
    generative_sweep(model, ["jazz"] * b, ["rock"] * b, duration=0.8, factor="half", target="low",
                     patches=[Patch(f"blocks.{model.num_layers - 1}.hook_resid_post"),
                              Patch("blocks.0.hook_resid_post", 100.0, None)],
                     read_from=0.0, scorer=scorer, use_sampling=False)
    codes = seen[0].reshape(4, b, *seen[0].shape[1:])
    direct = model.generate(["jazz"] * b + ["rock"] * b, 0.8, decode=False, use_sampling=False).codes
    assert torch.equal(codes[0], direct[:b]) and torch.equal(codes[1], direct[b:])
    assert not torch.equal(codes[0], codes[1])
    assert torch.equal(codes[2], codes[0]) and torch.equal(codes[3], codes[1])
