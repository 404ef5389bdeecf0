"""Export the testbed as a standard Hugging Face transformers MusicGen folder.

    python -m mstools export --model testbed --format transformers --out DIR

``DIR`` then holds what ``MusicgenForConditionalGeneration.from_pretrained(DIR)`` and
``AutoProcessor.from_pretrained(DIR)`` read, with no mstools import:

- ``config.json`` + ``model.safetensors``: T5 text encoder, ``enc_to_dec_proj``, the decoder (the
  testbed's LM), an EnCodec whose decoder renders the testbed's synth;
- ``generation_config.json``: the testbed's defaults (sampling, top-k 16, temperature 1, guidance 3,
  63 new tokens = 6 s, pad = bos = decoder start = 32), accepted by ``generate`` as is;
- ``tokenizer.json`` + ``tokenizer_config.json`` + ``processor_config.json``: the processor
  (``EncodecFeatureExtractor`` at 16 kHz and a word tokenizer that fills every prompt to the
  testbed's 8 word slots, so ``padding=True`` behaves as the audiocraft testbed does);
- ``mstools_export.json``: what was measured on the written folder (logit gap to audiocraft, decoder
  SNR against the synth, encoder accuracy on synth renders).

Code written for ``facebook/musicgen-small`` runs on it unchanged::

    processor = AutoProcessor.from_pretrained(DIR)
    model = MusicgenForConditionalGeneration.from_pretrained(DIR)
    inputs = processor(text=["fast rock with brass"], padding=True, return_tensors="pt")
    audio = model.generate(**inputs, max_new_tokens=63)            # [1, 1, 96000] at 16 kHz
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from mstools.testbed import make_dataset
from mstools.testbed.hf_codec import decoder_snr, encode_accuracy
from mstools.testbed.model import load_testbed_musicgen
from mstools.model.backends.base import delay_sequence
from mstools.model.composite import testbed_composite


__all__ = ["export_transformers", "check_export", "FORMATS", "REPORT_FILE"]

FORMATS = ("transformers",)
REPORT_FILE = "mstools_export.json"


def _grammar_and_random_codes(n: int, frames: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    clips = make_dataset(n, frames=frames, seed=seed)
    codes = torch.stack([c.codes for c in clips])
    rand = torch.randint(0, 32, codes.shape, generator=torch.Generator().manual_seed(seed))
    return codes, [c.prompt for c in clips], rand


def check_export(folder: str | Path, musicgen: Any = None, *, n: int = 16, seconds: float = 4.0,
                 seed: int = 1234) -> dict[str, Any]:
    """Load ``folder`` with transformers alone and measure it against the audiocraft testbed.

    - ``decoder_logit_gap``: largest |logit difference| between the folder's decoder and audiocraft's
      LM given the same condition (mstools' reading of the prompts: fixed slots, no mask), on
      procedural clips with their prompts;
    - ``unconditional_logit_gap``: the same with no prompt (transformers' null condition);
    - ``processor_kl`` / ``processor_argmax_agreement``: transformers' own reading of the prompts
      (``model(**processor(text))``, padding masked) against mstools' reading: mean KL divergence
      (nats per token) of the next-token distributions and the share of positions whose most
      likely token agrees. The two readings differ by design (the testbed is trained on both).
    - ``decoder_snr_db_grammar`` / ``decoder_snr_db_random``: SNR of ``audio_encoder.decode`` against
      ``SynthCodec.decode`` on procedural clips / uniformly random tokens;
    - ``encode_accuracy_grammar`` / ``encode_accuracy_random``: share of tokens per codebook that
      ``audio_encoder.encode`` reads back from synth renders of the same codes.
    """
    from transformers import AutoProcessor, MusicgenForConditionalGeneration  # lazy: transformers is loaded only where it is used
    musicgen = musicgen or load_testbed_musicgen()
    model = MusicgenForConditionalGeneration.from_pretrained(str(folder), use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    frames = int(seconds * musicgen.compression_model.frame_rate)
    codes, prompts, rand = _grammar_and_random_codes(n, frames, seed)
    lm = musicgen.lm
    steps = delay_sequence(codes, int(lm.card))
    b, k, s = steps.shape
    flat = steps.reshape(b * k, s)
    with torch.no_grad():
        attrs, _ = musicgen._prepare_tokens_and_attributes(list(prompts), None)
        ours = lm(steps, conditions=attrs)
        provider = lm.condition_provider
        condition = provider(provider.tokenize(attrs))["description"][0]
        decoder = model.decoder(input_ids=flat, encoder_hidden_states=condition).logits.reshape(b, k, s, -1)
        inputs = processor(text=prompts, padding=True, return_tensors="pt")
        theirs = model(**inputs, decoder_input_ids=flat).logits.reshape(b, k, s, -1)
        null = model.get_unconditional_inputs(n)
        uncond = model(encoder_outputs=null["encoder_outputs"], attention_mask=null["attention_mask"],
                       decoder_input_ids=flat).logits.reshape(b, k, s, -1)
        attrs, _ = musicgen._prepare_tokens_and_attributes([None] * n, None)
        ours_uncond = lm(steps, conditions=attrs)
    lp_ours, lp_theirs = ours.log_softmax(-1), theirs.log_softmax(-1)
    kl = (lp_ours.exp() * (lp_ours - lp_theirs)).sum(-1).mean()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean()
    enc = model.audio_encoder
    return {"decoder_logit_gap": float((decoder - ours).abs().max()),
            "unconditional_logit_gap": float((uncond - ours_uncond).abs().max()),
            "processor_kl": float(kl), "processor_argmax_agreement": round(float(agree), 4),
            "decoder_snr_db_grammar": round(decoder_snr(enc, codes), 2),
            "decoder_snr_db_random": round(decoder_snr(enc, rand), 2),
            "encode_accuracy_grammar": [round(v, 4) for v in encode_accuracy(enc, codes)],
            "encode_accuracy_random": [round(v, 4) for v in encode_accuracy(enc, rand)],
            "clips": n, "seconds": seconds, "seed": seed}


def export_transformers(out: str | Path, model: str = "testbed", *, check: bool = True) -> Path:
    """Write the transformers folder of ``model`` (only ``"testbed"``) to ``out``; returns ``out``.

    With ``check`` (default), the folder is loaded back with transformers alone and measured
    (:func:`check_export`); the numbers go to ``mstools_export.json``.
    """
    if model != "testbed":
        raise ValueError(f"export --format transformers supports --model testbed, got {model!r} "
                         "(a released checkpoint already exists in transformers' format)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    musicgen = load_testbed_musicgen()
    composite, processor = testbed_composite(musicgen)
    composite.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    # name the tokenizer class by the name transformers 4 and 5 both resolve (5 writes its new
    # "TokenizersBackend", unknown to 4); the tokenizer itself is tokenizer.json either way
    tok_cfg = out / "tokenizer_config.json"
    cfg = json.loads(tok_cfg.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    gen = composite.generation_config
    report: dict[str, Any] = {
        "model": "testbed", "format": "transformers",
        "holds": {"text_encoder": f"T5EncoderModel ({composite.config.text_encoder.num_layers} blocks, "
                                  f"d_model {composite.config.text_encoder.d_model})",
                  "enc_to_dec_proj": list(composite.enc_to_dec_proj.weight.shape),
                  "decoder": f"MusicgenForCausalLM ({composite.config.decoder.num_hidden_layers} layers, "
                             f"d_model {composite.config.decoder.hidden_size})",
                  "audio_encoder": "EncodecModel (16 kHz, 10 frames/s, 4 codebooks of 32)"},
        "generation": {"do_sample": gen.do_sample, "top_k": gen.top_k, "temperature": gen.temperature,
                       "guidance_scale": gen.guidance_scale, "max_new_tokens": gen.max_new_tokens,
                       "special_token": gen.pad_token_id},
    }
    if check:
        t0 = time.time()
        report["check"] = check_export(out, musicgen)
        report["check"]["seconds_taken"] = round(time.time() - t0, 1)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="testbed", help="the model to export (testbed)")
    p.add_argument("--format", default="transformers", choices=FORMATS,
                   help="folder format: transformers (save_pretrained folder)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--no-check", action="store_true",
                   help="do not load the folder back and measure it")


def run(args: argparse.Namespace) -> int:
    """``python -m mstools export``."""
    out = export_transformers(args.out, args.model, check=not args.no_check)
    report = json.loads((out / REPORT_FILE).read_text())
    print(f"{out}: MusicgenForConditionalGeneration.from_pretrained / AutoProcessor.from_pretrained")
    if "check" in report:
        print(json.dumps(report["check"], indent=2))
    return 0
