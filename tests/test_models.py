"""The real loading path (offline), and the real architectures with random weights."""
from __future__ import annotations

import pytest
import torch

import mstools
from mstools.model.loading import ARCHITECTURES, export_checkpoint


def test_released_checkpoint_offline_fails_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(mstools.MissingWeightsError) as e:
        mstools.load_musicgen("facebook/musicgen-small", device="cpu")
    msg = str(e.value)
    assert "facebook/musicgen-small" in msg and "load_musicgen('testbed')" in msg
    assert "build_musicgen('small')" in msg


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        mstools.load_musicgen("facebook/musicgen-smol", device="cpu")
    with pytest.raises(ValueError, match="build_musicgen"):
        mstools.load_musicgen("small", device="cpu")
    with pytest.raises(ValueError, match="unknown scale"):
        mstools.build_musicgen("huge")


def test_checkpoint_folder_round_trip_through_safe_loader(tmp_path):
    model = mstools.build_musicgen("tiny", seed=4)
    export_checkpoint(model, tmp_path)
    loaded = mstools.load_musicgen(str(tmp_path), device="cpu")
    codes = torch.randint(0, model.card, (2, 4, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(codes, ["a", "b"]), model(codes, ["a", "b"]))
    assert torch.equal(loaded.decode_codes(codes), model.decode_codes(codes))


def test_corrupt_or_incomplete_checkpoint_is_named(tmp_path):
    model = mstools.build_musicgen("tiny")
    export_checkpoint(model, tmp_path)
    data = (tmp_path / "state_dict.bin").read_bytes()
    (tmp_path / "state_dict.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(mstools.MissingWeightsError, match="state_dict.bin"):
        mstools.load_musicgen(str(tmp_path), device="cpu")
    (tmp_path / "compression_state_dict.bin").unlink()
    with pytest.raises(mstools.MissingWeightsError, match="compression_state_dict.bin"):
        mstools.load_musicgen(str(tmp_path), device="cpu")


def test_checkpoint_needing_t5_offline_says_so(tmp_path, monkeypatch):
    """A real config names a T5 text encoder; offline, that is reported as missing weights."""
    from omegaconf import OmegaConf
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model = mstools.build_musicgen("tiny")
    export_checkpoint(model, tmp_path)
    pkg = torch.load(tmp_path / "state_dict.bin", weights_only=True)
    cfg = OmegaConf.create(pkg["xp.cfg"])
    cfg.conditioners.description = {"model": "t5", "t5": {"name": "t5-base", "finetune": False,
                                                            "word_dropout": 0.0,
                                                            "normalize_text": False}}
    pkg["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(pkg, tmp_path / "state_dict.bin")
    with pytest.raises(mstools.MissingWeightsError, match="text encoder"):
        mstools.load_musicgen(str(tmp_path), device="cpu")


@pytest.mark.slow
def test_small_architecture_generates_two_seconds_with_a_hook_on_every_layer():
    """musicgen-small's true size (24 x 1024, 4 x 2048 codebooks, 32 kHz) with random weights."""
    model = mstools.build_musicgen("small", seed=0)
    a = ARCHITECTURES["small"]
    assert (model.num_layers, model.d_model, model.num_heads, model.card) == (
        a["num_layers"], a["dim"], a["num_heads"], a["card"])
    n_params = sum(p.numel() for p in model.lm.parameters())
    assert 3.5e8 < n_params < 5e8
    fired = torch.zeros(model.num_layers, dtype=torch.long)
    v = torch.randn(model.d_model)

    def steer(x, hook):
        fired[hook.layer()] += 1
        rows = hook.clock.rows("cond", x.shape[0])
        x = x.clone()
        x[rows] += 0.1 * v
        return x
    out = model.generate(["jazz"], duration=2.0, seed=0, fwd_hooks=[("blocks.*.hook_resid_post",
                                                                    steer)], top_k=250)
    assert out.codes.shape == (1, 4, 100)
    assert out.audio.shape == (1, 1, 64000) and out.sample_rate == 32000
    assert torch.isfinite(out.audio).all() and out.audio.abs().sum() > 0
    assert (fired == 100 + 3).all()  # T + K - 1 steps on every layer
