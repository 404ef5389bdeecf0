"""The testbed's text encoder: a standard transformers T5 encoder + tokenizer folder, the audiocraft
conditioner around it, the training captions, and insensitivity to padding (trained weights)."""
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mstools.testbed import build_testbed_musicgen, load_testbed_musicgen
from mstools.testbed.captions import CAPTION_WORDS, SYNONYMS, label_of_word, noisy_caption
from mstools.testbed.model import TEXT_ENCODER_DIR, WEIGHTS_DIR
from mstools.testbed.music import FACTORS, sample_clip
from mstools.testbed.text import (EOS_ID, PAD_ID, TEXT_ENCODER_FILES, UNK_ID, build_tokenizer, load_text_encoder,
                                  save_text_encoder)

shipped = pytest.mark.skipif(not (WEIGHTS_DIR / "manifest.json").exists(), reason="no trained weights shipped")


def test_tokenizer_is_t5_style_word_level():
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    vocab = tok.get_vocab()
    assert tok("Loud, FAST rock!")["input_ids"] == [vocab["loud"], vocab["fast"], vocab["rock"], EOS_ID]
    assert tok("rocks")["input_ids"] == [UNK_ID, EOS_ID]             # word level: no sub-word pieces
    assert tok("café 流行音乐 🎸")["input_ids"] == [UNK_ID] * 3 + [EOS_ID]
    assert tok("")["input_ids"] == [EOS_ID]
    batch = tok(["jazz", "soft jazz with piano"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [vocab["jazz"], EOS_ID, 0, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1] * 5]
    assert set(CAPTION_WORDS) <= set(vocab)


def test_saved_folder_loads_with_transformers_alone(tmp_path):
    """A subprocess that never imports mstools: AutoTokenizer + T5EncoderModel from the folder."""
    model = build_testbed_musicgen(seed=3)
    cond = model.lm.condition_provider.conditioners["description"]
    folder = save_text_encoder(cond.t5, cond.tokenizer, tmp_path / "text_encoder")
    assert sorted(p.name for p in folder.iterdir()) == sorted(TEXT_ENCODER_FILES)
    with torch.no_grad():
        ids = cond.tokenizer(["soft jazz with piano", "café"], padding=True, return_tensors="pt")
        expected = cond.t5(**ids).last_hidden_state
    torch.save(expected, tmp_path / "expected.pt")
    code = f"""
import sys, torch
from transformers import AutoTokenizer, T5EncoderModel, PreTrainedTokenizerFast
tok = AutoTokenizer.from_pretrained({str(folder)!r}, local_files_only=True)
assert isinstance(tok, PreTrainedTokenizerFast), type(tok)
assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
ids = tok(["soft jazz with piano", "café"], padding=True, return_tensors="pt")
assert ids["input_ids"][1].tolist()[:2] == [2, 1], ids
enc = T5EncoderModel.from_pretrained({str(folder)!r}, local_files_only=True).eval()
with torch.no_grad():
    out = enc(**ids).last_hidden_state
torch.testing.assert_close(out, torch.load({str(tmp_path / 'expected.pt')!r}))
assert "mstools" not in sys.modules
print("ok", type(tok).__name__)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().startswith("ok")
    encoder, tokenizer = load_text_encoder(folder)
    assert tokenizer.get_vocab() == cond.tokenizer.get_vocab()


def test_captions_use_known_words_and_report_what_they_name():
    rng = np.random.default_rng(0)
    wrong, mentioned, lengths, synonyms = Counter(), Counter(), [], 0
    for i in range(3000):
        labels = sample_clip(i, frames=4).labels
        caption, named = noisy_caption(labels, rng)
        words = caption.split()
        lengths.append(len(words))
        assert set(words) <= set(CAPTION_WORDS)
        said = {label_of_word(w) for w in words} - {None}
        assert said == set(named.items())                         # the caption names exactly ``named``
        for f, v in named.items():
            mentioned[f] += 1
            wrong[f] += v != labels[f]
        synonyms += sum(w not in {v for vs in FACTORS.values() for v in vs} and label_of_word(w) is not None
                        for w in words)
    assert 1 <= min(lengths) and max(lengths) <= 10
    for f in FACTORS:
        assert 0.65 < mentioned[f] / 3000 < 0.75
        assert 0.11 < wrong[f] / mentioned[f] < 0.19
    assert synonyms > 500
    for label, words in SYNONYMS.items():                          # each word names one label
        assert all(label_of_word(w)[1] == label for w in words)


@shipped
def test_shipped_text_encoder_folder_matches_the_lm_weights():
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    folder = WEIGHTS_DIR / manifest["text_encoder"]["folder"]
    assert folder.name == TEXT_ENCODER_DIR
    lm = load_file(str(WEIGHTS_DIR / manifest["weights"]))
    t5 = load_file(str(folder / "model.safetensors"))
    prefix = "condition_provider.conditioners.description.t5."
    for k, v in t5.items():
        assert torch.equal(lm[prefix + k], v), k
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"


@shipped
@torch.no_grad()
def test_trained_model_is_insensitive_to_the_number_of_padding_slots():
    """Fixed slots (audiocraft, padding attended) vs no padding (transformers, padding masked):
    next-token distributions far closer to each other than to the null text's."""
    from mstools.testbed.music import make_dataset, stack_codes
    model = load_testbed_musicgen()
    lm, cond = model.lm, model.lm.condition_provider.conditioners["description"]
    clips = make_dataset(16, 40, seed=4, mention_prob=1.0)
    codes = stack_codes(clips)
    prompts = [c.prompt if i % 2 else c.labels["genre"] for i, c in enumerate(clips)]
    tokens = cond.tokenize(prompts)
    fixed = lm.compute_predictions(codes, [], condition_tensors={"description": cond(tokens)})
    null = lm.compute_predictions(codes, [], condition_tensors={"description": cond(cond.tokenize([None] * 16))})
    kl_pad, kl_null = [], []
    for i in range(16):
        width = int(tokens["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :width] for k, v in tokens.items()}
        bare = lm.compute_predictions(codes[i:i + 1], [], condition_tensors={"description": cond(one)})
        m = fixed.mask[i]
        lp = torch.log_softmax(fixed.logits[i][m].double(), -1)
        for other, out in ((bare.logits[0][m], kl_pad), (null.logits[i][m], kl_null)):
            lq = torch.log_softmax(other.double(), -1)
            out.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
    assert np.mean(kl_pad) < 0.1 * np.mean(kl_null), (np.mean(kl_pad), np.mean(kl_null))
