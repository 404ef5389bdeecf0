"""``python -m mstools export --format transformers``: a standard transformers folder of the testbed.

- the folder loads with ``from_pretrained`` / ``AutoProcessor`` in a process that never imports mstools,
  and ``generate`` accepts its ``generation_config.json`` as is;
- code written for ``facebook/musicgen-small`` (processor -> generate -> a forward hook on a decoder
  layer that edits the conditional half) runs on it, and its clips score as mstools' own do;
- the composite equals the audiocraft testbed (logits, codes), its EnCodec decodes as the synth.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mstools
from mstools.testbed import score
from mstools.testbed.music import full_prompts
from mstools.testbed.score import adherence

HERE = Path(__file__).resolve().parent
SECONDS = 6.0
NEW_TOKENS = int(SECONDS * 10) + 3


def run_outside(folder: Path, out: Path, **args) -> dict:
    """``tests/_outside_generate.py`` in a fresh interpreter whose path holds no mstools."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-I", str(HERE / "_outside_generate.py"), str(folder),
                           str(out), json.dumps(args)], env=env, capture_output=True, text=True,
                          cwd=str(out.parent), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_folder_holds_a_standard_musicgen(exported_testbed):
    files = {p.name for p in exported_testbed.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "processor_config.json"} <= files
    assert not any(f.endswith((".py", ".bin")) for f in files)        # no code, no pickles
    config = json.loads((exported_testbed / "config.json").read_text())
    assert config["model_type"] == "musicgen"
    assert config["text_encoder"]["model_type"] == "t5"
    assert config["audio_encoder"]["model_type"] == "encodec"
    assert "auto_map" not in config
    gen = json.loads((exported_testbed / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["top_k"] == 16 and gen["temperature"] == 1.0
    assert gen["guidance_scale"] == 3.0 and gen["max_new_tokens"] == NEW_TOKENS
    assert gen["pad_token_id"] == gen["bos_token_id"] == gen["decoder_start_token_id"] == 32
    assert gen["num_return_sequences"] == 1


def test_processor_tokenizes_as_the_testbed_conditioner(exported_testbed):
    """transformers' processor pads to the longest prompt and masks the padding; its ids are the
    conditioner's own (words lower-cased, punctuation dropped, ``</s>`` appended)."""
    from transformers import AutoProcessor
    from mstools.testbed.text import EOS_ID, PAD_ID
    processor = AutoProcessor.from_pretrained(str(exported_testbed))
    texts = ["fast rock with brass", "jazz", "Loud, slow classical piano!"]
    out = processor(text=texts, padding=True, return_tensors="pt")
    assert out["input_ids"].shape == (3, 5)
    assert out["attention_mask"].sum(-1).tolist() == [5, 2, 5]
    assert out["input_ids"][1].tolist() == [out["input_ids"][1, 0].item(), EOS_ID] + [PAD_ID] * 3
    assert processor.tokenizer.convert_ids_to_tokens(out["input_ids"][2].tolist()) == [
        "loud", "slow", "classical", "piano", "</s>"]
    conditioner = mstools.testbed.load_testbed_musicgen().lm.condition_provider.conditioners["description"]
    for row, text in enumerate(texts):
        ids = conditioner.tokenize([text])["input_ids"][0]
        n = int(out["attention_mask"][row].sum())
        assert ids[:n].tolist() == out["input_ids"][row, :n].tolist()
        assert bool((ids[n:] == PAD_ID).all())


def test_mstools_testbed_on_transformers_is_the_composite(exported_testbed):
    from transformers import MusicgenForConditionalGeneration, T5EncoderModel
    model = mstools.load_musicgen("testbed", device="cpu", backend="transformers")
    composite = model.backend.composite
    assert isinstance(composite, MusicgenForConditionalGeneration)
    assert isinstance(composite.text_encoder, T5EncoderModel)
    assert model.backend.decoder is composite.decoder
    # the folder holds the same weights
    loaded = MusicgenForConditionalGeneration.from_pretrained(str(exported_testbed))
    state = loaded.state_dict()
    for k, v in composite.state_dict().items():
        assert torch.equal(state[k], v), k


def test_the_folder_generates_what_mstools_generates(exported_testbed):
    """transformers' own generate on the loaded folder against mstools' generate (both backends).

    The folder reads a prompt as transformers does (padding masked), mstools as audiocraft does
    (fixed slots, unmasked); the testbed is trained on both, so from the same seed the two sample
    nearly the same tokens (the export check measures the distributions: KL per token). mstools'
    two backends give identical codes.
    """
    from transformers import AutoProcessor, MusicgenForConditionalGeneration
    from _seed_reference import generate_codes
    model = MusicgenForConditionalGeneration.from_pretrained(str(exported_testbed)).eval()
    processor = AutoProcessor.from_pretrained(str(exported_testbed))
    prompts = ["fast rock with brass", "soft classical piano"]
    codes = generate_codes(model, processor, prompts, 23, seed=3)
    ours = {backend: mstools.load_musicgen("testbed", device="cpu", backend=backend).generate(
        prompts, 2.0, seed=3).codes for backend in ("audiocraft", "transformers")}
    assert torch.equal(ours["audiocraft"], ours["transformers"])
    assert (ours["audiocraft"] == codes).float().mean() >= 0.7


def test_outside_code_runs_and_scores_as_mstools(exported_testbed, tmp_path):
    """The seed authors' style code, in a process without mstools: unsteered and with their hook on
    layer 2 (conditional half, every 25th call). Its clips score at mstools' adherence.

    Tolerance: one clip in n per factor. Both runs sample nearly the same distributions (padding
    masked there, unmasked slots here) from the same seed, so most tokens agree; one slip can change
    one clip's label.
    """
    prompts, labels = full_prompts()
    prompts, labels = prompts[::8], labels[::8]                    # 8 prompts naming all factors
    n = len(prompts)
    plain = run_outside(exported_testbed, tmp_path / "plain.pt", prompts=prompts, seed=0,
                        max_new_tokens=NEW_TOKENS)
    assert plain["mstools_imported"] is False
    assert plain["codes"].shape == (n, 4, int(SECONDS * 10))
    assert plain["audio"].shape == (n, 1, int(SECONDS * 16000)) and plain["sampling_rate"] == 16000
    ours = mstools.load_musicgen("testbed", device="cpu").generate(prompts, SECONDS, seed=0).codes
    assert (plain["codes"] == ours).float().mean() >= 0.75
    a_out = adherence(score(plain["codes"]), labels)
    a_ours = adherence(score(ours), labels)
    for factor in a_ours:
        assert abs(a_out[factor] - a_ours[factor]) <= 1.0 / n + 1e-9, (factor, a_out, a_ours)
    assert min(a_ours.values()) >= 0.75                             # the testbed follows prompts
    # the audio it wrote reads back to its codes through the folder's own EnCodec
    assert (plain["encoded"] == plain["codes"]).float().mean() >= 0.99

    # with the released hook on layer 2: it runs and changes the clips
    g = torch.Generator().manual_seed(0)
    v = torch.randn(mstools.load_musicgen("testbed").d_model, generator=g)
    steered = run_outside(exported_testbed, tmp_path / "steered.pt", prompts=prompts, seed=0,
                          max_new_tokens=NEW_TOKENS,
                          steer={"vectors": {"2": (v / v.norm()).tolist()}, "strength": 1.0,
                                 "freq": 25, "offset": 0})
    assert steered["steered_calls"] == [(25, 2), (50, 2)]
    assert not torch.equal(steered["codes"], plain["codes"])


def test_audio_encoder_decodes_as_the_synth():
    """codes -> audio of the folder's EnCodec against SynthCodec: exact (to float rounding) on the
    grammar's tokens; pairs outside the grammar have no channel (silent voice)."""
    from mstools.testbed.codec import SynthCodec
    from mstools.testbed.hf_codec import decoder_snr, encode_accuracy, synth_encodec
    from mstools.testbed.music import make_dataset
    codec = SynthCodec()
    enc = synth_encodec(codec)
    codes = torch.stack([c.codes for c in make_dataset(8, frames=40, seed=5)])
    assert decoder_snr(enc, codes, codec) > 60.0
    rand = torch.randint(0, 32, (4, 4, 40), generator=torch.Generator().manual_seed(1))
    inside = rand.clone()
    inside[:, 0] %= 24
    inside[:, 1] %= 8
    assert decoder_snr(enc, inside, codec) > 60.0                  # any drum and loudness token
    assert decoder_snr(enc, rand, codec) < 20.0                    # outside pairs: not rendered
    assert min(encode_accuracy(enc, codes, codec)) >= 0.99
    assert min(encode_accuracy(enc, rand, codec)[:3]) >= 0.95


def test_export_command_writes_a_checked_folder(tmp_path):
    from mstools.apps.cli import main
    assert main(["export", "--model", "testbed", "--format", "transformers",
                 "--out", str(tmp_path / "hf")]) == 0
    report = json.loads((tmp_path / "hf" / "mstools_export.json").read_text())
    check = report["check"]
    assert check["decoder_logit_gap"] < 1e-4 and check["unconditional_logit_gap"] < 1e-4
    assert check["processor_kl"] < 0.01 and check["processor_argmax_agreement"] >= 0.95
    assert check["decoder_snr_db_grammar"] > 60.0
    assert min(check["encode_accuracy_grammar"]) >= 0.99
    with pytest.raises(ValueError, match="testbed"):
        from mstools.apps.export import export_transformers
        export_transformers(tmp_path / "x", model="facebook/musicgen-small")


def test_an_untrained_t5_testbed_is_one_model_on_both_backends():
    """The testbed's T5 conditioner on transformers: the composite takes its T5, tokenizer and
    output_proj, and mstools reads prompts as audiocraft does (fixed slots, no mask), also for a
    freshly initialised testbed (no trained weights involved)."""
    from mstools.model.loading import testbed_on_transformers
    from mstools.model.hooked import HookedMusicGen
    from mstools.testbed import build_testbed_musicgen
    from mstools.testbed.text import TEXT_CONFIG
    mg = build_testbed_musicgen(seed=0)
    ac = HookedMusicGen(mg, name="t5-testbed")
    hf = HookedMusicGen(testbed_on_transformers(mg), name="t5-testbed")
    assert hf.backend.text.slots == TEXT_CONFIG["slots"] and ac.fingerprint == hf.fingerprint
    prompts = ["fast rock with brass", None, "soft jazz"]
    codes = torch.randint(0, 32, (3, 4, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hf(codes, prompts), ac(codes, prompts), atol=1e-4, rtol=0)
    oa = ac.generate(prompts, 2.0, seed=1, decode=False).codes
    oh = hf.generate(prompts, 2.0, seed=1, decode=False).codes
    assert torch.equal(oa, oh)


def test_encoder_head_training_runs_and_the_shipped_head_is_recorded():
    import json as _json
    from mstools.testbed.codec import SynthCodec
    from mstools.testbed.model import WEIGHTS_DIR
    from mstools.testbed.train_encodec import HEAD_MANIFEST, sample_frames, train
    frames, tokens = sample_frames(SynthCodec(), 64, torch.Generator().manual_seed(0), grammar_share=1.0)
    assert frames.shape == (64, 1600) and int(tokens[:, 0].max()) < 24 and int(tokens[:, 1].max()) < 8
    held = tokens[:, 1] % 2 == 1
    assert bool((tokens[held, 2] == 0).all()) and bool((tokens[~held, 2] >= 1).all())
    head, info = train(steps=3, log=False)
    assert info["steps"] == 3 and head(frames).shape == (64, 4, 32)
    shipped = _json.loads((WEIGHTS_DIR / HEAD_MANIFEST).read_text())
    assert shipped["accuracy_grammar_frames"] == [1.0, 1.0, 1.0, 1.0]
