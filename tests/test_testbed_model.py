"""Testbed MusicGen: audiocraft classes, hookable modules, conditioner, training, weights integrity."""
import json
import shutil

import pytest
import torch
from torch import nn

from audiocraft.models.lm import LMModel
from audiocraft.models.musicgen import MusicGen
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
from audiocraft.modules.conditioners import ConditioningAttributes, TextConditioner
from safetensors.torch import load_file

from mstools.testbed import build_testbed_musicgen, load_testbed_musicgen, score
from mstools.testbed.model import WEIGHTS_DIR, file_sha256
from mstools.testbed.train import main as train_main, train


@pytest.fixture(scope="module")
def model():
    return build_testbed_musicgen(seed=0)


def _conds(prompts):
    return [ConditioningAttributes(text={"description": p}) for p in prompts]


def test_built_from_audiocraft_classes_with_hookable_modules(model):
    lm = model.lm
    assert isinstance(model, MusicGen) and isinstance(lm, LMModel)
    assert isinstance(lm.pattern_provider, DelayedPatternProvider) and lm.n_q == 4 and lm.card == 32
    assert isinstance(lm.condition_provider.conditioners["description"], TextConditioner)
    layers = lm.transformer.layers
    assert len(layers) >= 4
    calls = []
    handles = [layer.self_attn.out_proj.register_forward_hook(lambda *a: calls.append(1)) for layer in layers]
    try:
        for layer in layers:
            assert all(isinstance(getattr(layer, n), nn.Identity)
                       for n in ("layer_scale_1", "layer_scale_cross", "layer_scale_2"))
        with torch.no_grad():
            lm.compute_predictions(torch.zeros(1, 4, 6, dtype=torch.long), _conds(["jazz"]))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(layers)          # out_proj is really called in forward


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_testbed_musicgen(seed=5).lm.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = build_testbed_musicgen(seed=5).lm.state_dict()
    c = build_testbed_musicgen(seed=6).lm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_generate_with_random_weights(model):
    model.set_generation_params(duration=0.5)
    wav, codes = model.generate(["jazz", "fast rock with brass"], return_tokens=True)
    assert codes.shape == (2, 4, 5) and wav.shape == (2, 1, 8000)
    assert model.generation_params["top_k"] <= 32 and model.generation_params["cfg_coef"] == 3.0
    assert model.generate_unconditional(1).shape == (1, 1, 8000)
    model.set_generation_params()


def test_condition_tensor_and_logits_do_not_depend_on_the_batch(model):
    lm = model.lm
    provider = lm.condition_provider
    slots = lm.condition_provider.conditioners["description"].slots
    alone = provider(provider.tokenize(_conds(["jazz"])))["description"]
    batch = provider(provider.tokenize(_conds(["jazz", "loud fast rock with brass", None])))["description"]
    assert alone[0].shape == (1, slots, lm.dim)
    assert torch.allclose(alone[0][0], batch[0][0], atol=1e-6) and torch.equal(alone[1][0], batch[1][0])
    codes = torch.randint(0, 32, (1, 4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = lm.compute_predictions(codes, _conds(["jazz"])).logits
        many = lm.compute_predictions(codes.repeat(3, 1, 1), _conds(["jazz", "soft slow classical with piano", None])).logits
        # negative control: the same words with fewer padding slots give other activations
        tokens = provider.tokenize(_conds(["jazz"]))["description"]
        short = provider.conditioners["description"]({k: v[:, :2] for k, v in tokens.items()})
        other = lm.compute_predictions(codes, [], condition_tensors={"description": short}).logits
    valid = ~torch.isnan(one)
    assert torch.allclose(one[valid], many[:1][valid], atol=1e-5)
    assert not torch.allclose(one[valid], other[valid], atol=1e-3)


def test_conditioner_tokens_unknown_words_null_and_errors(model):
    cond = model.lm.condition_provider.conditioners["description"]
    vocab = cond.tokenizer.get_vocab()
    inputs = cond.tokenize(["Soft, classical PIANO", None, "café 流行音乐 🎸 jazz"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids[0, :4].tolist() == [vocab["soft"], vocab["classical"], vocab["piano"], 1]   # </s> appended
    assert mask.sum(-1).tolist() == [4, 0, 5]
    assert ids[2, :5].tolist() == [2, 2, 2, vocab["jazz"], 1]            # unknown words are <unk>, not dropped
    assert (ids[1] == 0).all() and ids.shape[1] == cond.slots
    emb, _ = cond(inputs)
    assert torch.count_nonzero(emb[1]) == 0 and torch.count_nonzero(emb[0, 4:]) == 0
    assert torch.count_nonzero(emb[0, :4]) > 0
    with pytest.raises(ValueError, match=f"at most {cond.slots}"):
        cond.tokenize(["rock " * cond.slots])


def test_text_conditioner_is_t5_and_output_proj_maps_to_the_lm_width(model):
    from transformers import T5EncoderModel
    cond = model.lm.condition_provider.conditioners["description"]
    assert isinstance(cond.t5, T5EncoderModel)
    assert cond.output_proj.in_features == cond.t5.config.d_model and cond.output_proj.out_features == model.lm.dim
    assert cond.output_proj.bias is not None
    keys = [k for k in model.lm.state_dict() if k.startswith("condition_provider.conditioners.description.t5.")]
    assert keys and all(k.split("description.t5.", 1)[1] in cond.t5.state_dict() for k in keys)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    kw = dict(steps=4, batch=2, warmup=1, config={"train_seconds": 1.0}, progress=False)
    train(tmp_path / "a", checkpoint_dir=tmp_path / "ca", **kw)
    train(tmp_path / "b", checkpoint_dir=tmp_path / "cb", stop_after=2, **kw)
    assert json.loads((tmp_path / "cb" / "state.json").read_text())["step"] == 2
    train(tmp_path / "b", checkpoint_dir=tmp_path / "cb", **kw)
    a = load_file(str(tmp_path / "a" / "testbed.safetensors"))
    b = load_file(str(tmp_path / "b" / "testbed.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="different run"):
        train(tmp_path / "c", checkpoint_dir=tmp_path / "ca", **{**kw, "steps": 5})


def _corrupt_copies_are_refused(src_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(src_dir, bad, ignore=shutil.ignore_patterns("checkpoints"))
    data = bytearray((bad / "testbed.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "testbed.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or half-written"):
        load_testbed_musicgen(bad)
    (bad / "testbed.safetensors").write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ValueError, match="corrupt or half-written"):
        load_testbed_musicgen(bad / "testbed.safetensors")
    (bad / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="mstools.testbed.train"):
        load_testbed_musicgen(bad)
    bad2 = tmp_path / "bad2"
    shutil.copytree(src_dir, bad2, ignore=shutil.ignore_patterns("checkpoints"))
    vocab = bad2 / "text_encoder" / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"rock"', '"rokk"'))
    with pytest.raises(ValueError, match="corrupt or half-written"):
        load_testbed_musicgen(bad2)


def test_smoke_training_end_to_end_then_load(tmp_path):
    out = tmp_path / "weights"
    train_main(["--smoke", "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"] == file_sha256(out / "testbed.safetensors")
    assert manifest["training"]["steps_done"] == 3 and "val_loss" in manifest["metrics"]
    loaded = load_testbed_musicgen(out)
    saved = load_file(str(out / "testbed.safetensors"))
    assert all(torch.equal(loaded.lm.state_dict()[k], saved[k]) for k in saved)
    loaded.set_generation_params(duration=0.3)
    assert loaded.generate(["jazz"]).shape == (1, 1, 4800)
    _corrupt_copies_are_refused(out, tmp_path)


trained = pytest.mark.skipif(not (WEIGHTS_DIR / "manifest.json").exists(), reason="no trained weights shipped")


@trained
def test_shipped_weights_load_verified_and_follow_prompts(tmp_path):
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    weights = WEIGHTS_DIR / manifest["weights"]
    assert file_sha256(weights) == manifest["sha256"] and weights.stat().st_size <= 16 * 2 ** 20
    model = load_testbed_musicgen()
    model.set_generation_params(duration=3.0)
    torch.manual_seed(0)
    prompts = ["loud fast rock with brass", "soft slow jazz with piano", "loud slow classical with strings",
               "soft fast electronic with synth"]
    _, codes = model.generate(prompts, return_tokens=True)
    df = score(codes)
    wanted = [p.replace(" with", "").split() for p in prompts]
    got = df[["dynamics", "tempo", "genre", "instrument"]].values.tolist()
    assert sum(w == g for w, g in zip(wanted, got)) >= 3, got
    _corrupt_copies_are_refused(WEIGHTS_DIR, tmp_path)
