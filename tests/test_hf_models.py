"""transformers MusicGen: random builds at the released shapes, offline tokenizer, local loading, errors."""
from __future__ import annotations

import json

import pytest
import torch

from mstools.model.backends.hf_models import (HF_ARCHITECTURES, build_hf_musicgen, hf_musicgen_config,
                                        load_hf_musicgen, offline_tokenizer, randomize_codebooks)
from mstools.model.loading import MissingWeightsError

torch.set_num_threads(1)

TINY = HF_ARCHITECTURES["tiny"]
TINY_SR, TINY_FPS = 16000, 25  # what the tiny EnCodec is meant to be: 16 kHz, 25 frames/s


@pytest.fixture(scope="module")
def tiny():
    return build_hf_musicgen("tiny", seed=0)


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _codes(seed: int, frames: int = 6) -> torch.Tensor:
    """EnCodec decode input: [chunks=1, B=1, codebooks=4, frames]."""
    card = TINY["audio_encoder"]["codebook_size"]
    return torch.randint(0, card, (1, 1, 4, frames), generator=torch.Generator().manual_seed(seed))


# -- build ---------------------------------------------------------------------------------------------

def test_tiny_special_tokens_and_generation_settings(tiny):
    model, _ = tiny
    vocab = TINY["decoder"]["vocab_size"]
    dec = model.config.decoder
    assert dec.pad_token_id == dec.bos_token_id == dec.decoder_start_token_id == vocab == 64
    assert model.config.pad_token_id == model.config.bos_token_id == vocab
    assert model.config.decoder_start_token_id == vocab
    g = model.generation_config
    assert g.pad_token_id == g.bos_token_id == g.decoder_start_token_id == vocab
    assert (g.do_sample, g.guidance_scale, g.top_k, g.max_length) == (True, 3.0, 64, 1500)
    assert model.config.audio_encoder.sampling_rate == TINY_SR
    assert model.config.audio_encoder.frame_rate == TINY_FPS
    assert model.config.audio_encoder.num_quantizers == model.config.decoder.num_codebooks == 4
    assert not model.training and next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("frames", [4, 9])
def test_generate_gives_audio_of_n_frames_with_n_plus_3_new_tokens(tiny, frames):
    model, tok = tiny
    inputs = tok(["jazz", "slow blues with a soft piano"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    audio = model.generate(**inputs, max_new_tokens=frames + 3, do_sample=True)
    assert audio.shape == (2, 1, frames * TINY_SR // TINY_FPS)  # 640 samples per frame
    assert torch.isfinite(audio).all() and audio.abs().sum() > 0
    # the delay pattern eats K - 1 = 3 steps: 2 extra tokens give one frame less
    torch.manual_seed(0)
    short = model.generate(**inputs, max_new_tokens=frames + 2, do_sample=True)
    assert short.shape[-1] == (frames - 1) * TINY_SR // TINY_FPS


def test_audio_depends_on_codes_only_after_randomizing_codebooks(tiny):
    from transformers import EncodecModel
    model, _ = tiny
    a, b = _codes(1), _codes(2)
    assert not torch.equal(a, b)
    with torch.no_grad():
        built = [model.audio_encoder.decode(c, [None]).audio_values for c in (a, b)]
        assert built[0].shape == (1, 1, 6 * TINY_SR // TINY_FPS)
        assert (built[0] - built[1]).abs().max() > 1e-4
        # transformers' own random init: zero codebooks, so every code decodes to the same audio
        plain = EncodecModel(model.config.audio_encoder).eval()
        same = [plain.decode(c, [None]).audio_values for c in (a, b)]
        assert torch.equal(same[0], same[1])
        randomize_codebooks(plain, seed=3)
        fixed = [plain.decode(c, [None]).audio_values for c in (a, b)]
        assert (fixed[0] - fixed[1]).abs().max() > 1e-4


def test_randomized_codebooks_are_what_the_quantizer_decodes(tiny):
    """RVQ decode of codes == sum over codebooks of the chosen rows (manual), EMA state consistent."""
    model, _ = tiny
    q = model.audio_encoder.quantizer
    codes = _codes(5)[0].transpose(0, 1)  # [4, B, frames]
    books = [layer.codebook for layer in q.layers]
    manual = sum(books[k].embed[codes[k]] for k in range(4)).permute(0, 2, 1)  # [B, dim, frames]
    assert torch.allclose(q.decode(codes), manual)
    dim = books[0].embed.shape[1]
    bound = (6.0 / dim) ** 0.5
    for book in books:
        e = book.embed
        assert e.abs().max() <= bound and e.abs().max() > 0.9 * bound
        assert abs(e.std().item() - bound / 3 ** 0.5) < 0.1 * bound  # uniform(-b, b): std b/sqrt(3)
        assert torch.equal(book.embed_avg, e)
        assert torch.equal(book.cluster_size, torch.ones_like(book.cluster_size))
        assert bool(book.inited.item())
    assert not torch.equal(books[0].embed, books[1].embed)


def test_randomize_codebooks_is_seeded_and_rejects_other_modules(tiny):
    from transformers import EncodecModel
    model, _ = tiny
    before = torch.get_rng_state()
    x, y, z = (EncodecModel(model.config.audio_encoder) for _ in range(3))
    state = torch.get_rng_state()
    randomize_codebooks(x, 7)
    randomize_codebooks(y, 7)
    randomize_codebooks(z, 8)
    assert torch.equal(torch.get_rng_state(), state)
    e = [m.quantizer.layers[2].codebook.embed for m in (x, y, z)]
    assert torch.equal(e[0], e[1]) and not torch.equal(e[0], e[2])
    assert not torch.equal(before, state)  # building did draw from the global RNG (the check can fail)
    with pytest.raises(TypeError, match="audio_encoder"):
        randomize_codebooks(model, 0)


def test_weights_depend_only_on_seed_and_global_rng_is_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, _ = build_hf_musicgen("tiny", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # a different global state must not change the weights
    b, _ = build_hf_musicgen("tiny", seed=5)
    c, _ = build_hf_musicgen("tiny", seed=6)
    assert _state_equal(a, b)
    assert not _state_equal(a, c)
    for part in ("decoder", "text_encoder", "audio_encoder"):
        assert not _state_equal(getattr(a, part), getattr(c, part)), part


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="unknown scale 'huge'.*tiny"):
        build_hf_musicgen("huge")


# -- tokenizer -----------------------------------------------------------------------------------------

def test_offline_tokenizer_ids_follow_t5_conventions():
    tok = offline_tokenizer(600)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(["Jazz, with PIANO!"])["input_ids"][0]
    assert tok.convert_ids_to_tokens(ids) == ["jazz", ",", "with", "piano", "!", "</s>"]
    assert tok(["zzyzx"])["input_ids"][0] == [2, 1]
    batch = tok(["rock", "soft jazz piano"], return_tensors="pt", padding=True)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["input_ids"][0].tolist() == [tok.convert_tokens_to_ids("rock"), 1, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert len(tok) <= TINY["text_encoder"]["vocab_size"]
    assert len(tok) > 300


def test_offline_tokenizer_ids_stay_below_vocab_size():
    small = offline_tokenizer(10)
    assert len(small) == 10
    ids = small(["jazz rock pop with piano, guitar and drums"])["input_ids"][0]
    assert max(ids) < 10 and 2 in ids  # words past the first 10 entries are unknown
    with pytest.raises(ValueError, match="too small"):
        offline_tokenizer(3)


def test_offline_tokenizer_saves_and_reloads_with_autotokenizer(tmp_path):
    from transformers import AutoTokenizer
    tok = offline_tokenizer(600)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["Lo-fi hip hop, 90 BPM", "epic orchestral score with choir"]
    a = tok(texts, return_tensors="pt", padding=True)
    b = again(texts, return_tensors="pt", padding=True)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])


# -- loading -------------------------------------------------------------------------------------------

def test_saved_folder_loads_bit_identical_and_generates_the_same(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_hf_musicgen(str(tmp_path))
    assert type(loaded) is type(model) and not loaded.training
    assert _state_equal(loaded, model)
    assert loaded.generation_config.guidance_scale == 3.0
    inputs = tok(["jazz", "loud rock"], return_tensors="pt", padding=True)
    linputs = ltok(["jazz", "loud rock"], return_tensors="pt", padding=True)
    assert torch.equal(inputs["input_ids"], linputs["input_ids"])
    torch.manual_seed(11)
    ref = model.generate(**inputs, max_new_tokens=8)
    torch.manual_seed(11)
    out = loaded.generate(**linputs, max_new_tokens=8)
    assert out.shape == (2, 1, 5 * TINY_SR // TINY_FPS)
    assert torch.equal(out, ref)


def test_released_checkpoint_offline_says_what_to_do():
    with pytest.raises(MissingWeightsError) as e:
        load_hf_musicgen("facebook/musicgen-small")
    msg = str(e.value)
    assert "'facebook/musicgen-small'" in msg
    assert "hf download facebook/musicgen-small" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "model.safetensors" in msg and "config.json" in msg
    assert "load_musicgen('testbed', backend='transformers')" in msg
    assert "build_musicgen('small', backend='transformers')" in msg


@pytest.fixture()
def saved_tiny(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_truncated_safetensors_is_named(saved_tiny):
    f = saved_tiny / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(MissingWeightsError, match=r"model\.safetensors.*corrupt or half-written"):
        load_hf_musicgen(str(saved_tiny))


def test_missing_files_are_named(saved_tiny):
    (saved_tiny / "model.safetensors").rename(saved_tiny / "pytorch_model.bin")
    with pytest.raises(MissingWeightsError, match=r"model\.safetensors is missing.*pytorch_model\.bin"):
        load_hf_musicgen(str(saved_tiny))
    (saved_tiny / "config.json").unlink()
    with pytest.raises(MissingWeightsError, match=r"config\.json is missing"):
        load_hf_musicgen(str(saved_tiny))
    with pytest.raises(MissingWeightsError, match="not a folder"):
        load_hf_musicgen(str(saved_tiny / "nothing-here"))


def test_missing_tokenizer_is_named(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    # (AutoTokenizer alone would make an empty T5 tokenizer from the config: every word -> <unk>)
    with pytest.raises(MissingWeightsError, match=r"tokenizer files .* not found.*tokenizer\.json"):
        load_hf_musicgen(str(tmp_path))


def test_melody_checkpoints_point_to_the_audiocraft_backend(tmp_path):
    from transformers import (EncodecConfig, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              T5Config)
    with pytest.raises(NotImplementedError, match="text-only MusicGen.*audiocraft backend"):
        load_hf_musicgen("facebook/musicgen-melody")
    cfg = MusicgenMelodyConfig(text_encoder=T5Config(**TINY["text_encoder"]),
                               audio_encoder=EncodecConfig(**TINY["audio_encoder"]),
                               decoder=MusicgenMelodyDecoderConfig(hidden_size=32, num_hidden_layers=1,
                                                                   num_attention_heads=4, ffn_dim=64))
    cfg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "musicgen_melody"
    with pytest.raises(NotImplementedError, match="audiocraft backend"):
        load_hf_musicgen(str(tmp_path))


# -- released size -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_small_has_the_released_shape_and_the_audiocraft_transformer_size():
    import mstools
    model, _ = build_hf_musicgen("small", seed=0)
    cfg = model.config
    d = cfg.decoder
    assert (d.num_hidden_layers, d.hidden_size, d.num_attention_heads, d.ffn_dim) == (24, 1024, 16, 4096)
    assert (d.vocab_size, d.num_codebooks, d.max_position_embeddings) == (2048, 4, 2048)
    assert d.pad_token_id == d.bos_token_id == 2048 and model.generation_config.top_k == 250
    t = cfg.text_encoder
    assert (t.d_model, t.num_layers, t.num_heads, t.d_ff, t.vocab_size) == (768, 12, 12, 3072, 32128)
    a = cfg.audio_encoder
    assert (a.sampling_rate, a.frame_rate, a.num_quantizers, a.codebook_size) == (32000, 50, 4, 2048)
    layers = model.decoder.model.decoder.layers
    assert len(layers) == 24
    n_hf = sum(p.numel() for p in layers.parameters())
    # per layer, no biases in attention or MLP: self- and cross-attention 2 x 4 D^2, MLP 2 x 4 D^2,
    # three LayerNorms 3 x 2 D
    dim = 1024
    assert n_hf == 24 * (16 * dim * dim + 6 * dim)
    reference = hf_musicgen_config("small")
    assert reference.decoder.to_dict() == d.to_dict()
    del model
    n_ac = sum(p.numel() for p in mstools.build_musicgen("small").lm.transformer.parameters())
    print(f"decoder layers: transformers {n_hf:,} vs audiocraft lm.transformer {n_ac:,}")
    assert abs(n_hf - n_ac) / n_ac < 0.01
    assert 3.9e8 < n_hf < 4.1e8


@pytest.mark.slow
def test_small_generates_on_the_transformers_backend_with_a_hook_on_every_layer():
    """musicgen-small's true size through HookedMusicGen: every layer hooked at every step, a
    cond-only edit leaves the unconditional rows as they were."""
    import mstools
    model = mstools.build_musicgen("small", seed=0, backend="transformers")
    assert (model.num_layers, model.d_model, model.num_heads, model.card) == (24, 1024, 16, 2048)
    fired = torch.zeros(model.num_layers, dtype=torch.long)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))

    def steer(x, hook):
        fired[hook.layer()] += 1
        x = x.clone()
        x[hook.clock.rows("cond", x.shape[0])] += 0.1 * v
        return x
    names = ["blocks.23.hook_resid_post"]
    plain = model.generate(["jazz"], duration=0.5, seed=0, cache=names)
    out = model.generate(["jazz"], duration=0.5, seed=0, cache=names,
                         fwd_hooks=[("blocks.*.hook_resid_post", steer)])
    assert out.codes.shape == (1, 4, 25)
    assert out.audio.shape == (1, 1, 16000) and out.sample_rate == 32000
    assert torch.isfinite(out.audio).all() and out.audio.abs().sum() > 0
    assert (fired == 25 + 3).all()  # T + K - 1 steps on every layer
    # the first step is the same start token on both branches: uncond untouched, cond moved
    first_u, first_c = (c[names[0]][:, :1] for c in (out.cache.uncond, out.cache.cond))
    torch.testing.assert_close(first_u, plain.cache.uncond[names[0]][:, :1], atol=1e-5, rtol=0)
    assert (first_c - plain.cache.cond[names[0]][:, :1]).abs().max() > 1e-3
