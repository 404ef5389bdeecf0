"""The testbed's text condition as transformers parts: ``T5EncoderModel``, tokenizer, ``enc_to_dec_proj``.

transformers' ``MusicgenForConditionalGeneration`` computes the decoder's cross-attention source as
``enc_to_dec_proj(T5(input_ids, attention_mask)) * attention_mask`` and masks cross-attention with
the same ``attention_mask``. audiocraft's cross-attention has no mask: the testbed's conditioner
(:class:`mstools.testbed.text.T5TextConditioner`) pads every prompt to a fixed number of slots
whose vectors are zero, and the LM attends to all of them (a zero key adds ``exp(0)`` to the softmax
denominator). mstools' transformers backend reads prompts as the conditioner does (the same slots,
no mask: the two backends are one model, :func:`fills_slots` tells when a tokenizer does it by
itself); transformers' own ``processor -> generate`` masks the padding, which the testbed was
trained to tolerate (random padding during training).
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

__all__ = ["testbed_text_encoder", "fills_slots"]


def fills_slots(tokenizer: Any, slots: int) -> bool:
    """Whether ``tokenizer`` itself gives every short prompt ``slots`` tokens with mask 1 (then
    transformers' padding and masking read a prompt exactly as audiocraft's unmasked slots do)."""
    out = tokenizer(["a", ""], padding=True)
    return len(out["input_ids"][0]) == slots and all(out["attention_mask"][0])


def testbed_text_encoder(musicgen: Any) -> tuple[Any, Any, nn.Linear]:
    """``(T5EncoderModel, tokenizer, enc_to_dec_proj)``: copies of the testbed conditioner's T5 and
    tokenizer, and its ``output_proj`` as ``enc_to_dec_proj``.

    >>> t5, tokenizer, proj = testbed_text_encoder(model.musicgen)
    >>> type(t5).__name__, proj.out_features == model.d_model
    ('T5EncoderModel', True)
    """
    conditioner = musicgen.lm.condition_provider.conditioners["description"]
    if not (hasattr(conditioner, "t5") and hasattr(conditioner, "tokenizer")):
        raise TypeError(f"the testbed's conditioner is a {type(conditioner).__name__}; a transformers "
                        "export needs its T5 encoder and tokenizer (mstools.testbed.text)")
    t5 = copy.deepcopy(conditioner.t5).cpu().eval()
    tokenizer = copy.deepcopy(conditioner.tokenizer)
    lin = conditioner.output_proj
    proj = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    proj.load_state_dict(lin.state_dict())
    return t5, tokenizer, proj
