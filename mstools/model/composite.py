"""The testbed as a standard transformers ``MusicgenForConditionalGeneration`` (and its processor).

:func:`testbed_composite` assembles, from the trained testbed (audiocraft weights):

- ``text_encoder``: a ``T5EncoderModel`` and its tokenizer (:mod:`mstools.testbed.hf_text`);
- ``enc_to_dec_proj``: the conditioner's ``output_proj``;
- ``decoder``: the LM's weights mapped into ``MusicgenForCausalLM`` (:mod:`mstools.model.backends.convert`);
- ``audio_encoder``: an ``EncodecModel`` that decodes as ``SynthCodec`` (:mod:`mstools.testbed.hf_codec`);
- ``generation_config``: the testbed's defaults (sampling, top-k 16, temperature 1, guidance 3,
  6 s = 60 frames = 63 new tokens under the delay pattern; pad = bos = decoder start = 32);
- a ``MusicgenProcessor`` (``EncodecFeatureExtractor`` at 16 kHz + the tokenizer).

``model.save_pretrained(folder)`` + ``processor.save_pretrained(folder)`` give a folder that
``MusicgenForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` load with
no mstools code (:func:`mstools.apps.export.export_transformers`).
"""
from __future__ import annotations

from typing import Any

import torch
from mstools.model.backends.convert import decoder_from_audiocraft
from mstools.model.backends.hf_models import _quiet_special_token_warnings
from mstools.testbed.hf_codec import synth_encodec
from mstools.testbed.hf_text import testbed_text_encoder
from mstools.testbed.model import load_testbed_musicgen

__all__ = ["testbed_composite", "testbed_generation_config", "testbed_processor"]


def testbed_generation_config(musicgen: Any) -> Any:
    """``GenerationConfig`` with the testbed's generation defaults (``TESTBED_CONFIG["generation"]``)."""
    from transformers import GenerationConfig  # lazy: transformers is loaded only where it is used
    lm = musicgen.lm
    gen = lm.testbed_config["generation"]
    card = int(lm.card)
    frames = int(gen["duration"] * musicgen.compression_model.frame_rate)
    return GenerationConfig(
        do_sample=True, top_k=min(int(gen["top_k"]), card), temperature=float(gen["temperature"]),
        guidance_scale=float(gen["cfg_coef"]), max_new_tokens=frames + int(lm.num_codebooks) - 1,
        pad_token_id=card, bos_token_id=card, decoder_start_token_id=card, use_cache=True,
        num_return_sequences=1, num_beams=1)   # MusicGen's generate reads both (None fails)


def testbed_processor(tokenizer: Any, sample_rate: int) -> Any:
    from transformers import EncodecFeatureExtractor, MusicgenProcessor  # lazy: transformers is loaded only where it is used
    fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=sample_rate, padding_value=0.0,
                                 chunk_length_s=None, overlap=None)
    return MusicgenProcessor(feature_extractor=fe, tokenizer=tokenizer)


def testbed_composite(musicgen: Any = None) -> tuple[Any, Any]:
    """``(MusicgenForConditionalGeneration, MusicgenProcessor)`` of the testbed (eval mode, CPU).

    Args:
        musicgen: an audiocraft testbed ``MusicGen`` (default: the trained one,
            :func:`~mstools.testbed.model.load_testbed_musicgen`).
    """
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration  # lazy: transformers is loaded only where it is used
    musicgen = musicgen or load_testbed_musicgen()
    lm = musicgen.lm
    decoder = decoder_from_audiocraft(lm).cpu()
    t5, tokenizer, proj = testbed_text_encoder(musicgen)
    encodec = synth_encodec(musicgen.compression_model)
    card = int(lm.card)
    with _quiet_special_token_warnings():
        config = MusicgenConfig(text_encoder=t5.config, audio_encoder=encodec.config,
                                decoder=decoder.config)
        config.pad_token_id = config.bos_token_id = config.decoder_start_token_id = card
        with torch.random.fork_rng(devices=[]):
            model = MusicgenForConditionalGeneration(config=config, text_encoder=t5,
                                                     audio_encoder=encodec, decoder=decoder)
    if getattr(model, "enc_to_dec_proj", None) is None:
        raise ValueError("the composite has no enc_to_dec_proj: text and decoder widths are equal")
    # sub-configs passed in lose their attention dispatch: without this the decoder ignores its
    # causal mask on multi-step inputs (teacher forcing); from_pretrained sets it by itself
    model.set_attn_implementation({"decoder": "sdpa"})
    with torch.no_grad():
        model.enc_to_dec_proj.weight.copy_(proj.weight)
        model.enc_to_dec_proj.bias.copy_(proj.bias)
    model.generation_config = testbed_generation_config(musicgen)
    model.decoder.generation_config = model.generation_config
    return model.eval(), testbed_processor(tokenizer, int(musicgen.compression_model.sample_rate))
