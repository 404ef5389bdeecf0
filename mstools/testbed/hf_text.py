"""The testbed's text condition as a transformers ``T5EncoderModel`` + tokenizer + ``enc_to_dec_proj``.

transformers' ``MusicgenForConditionalGeneration`` computes the decoder's cross-attention source as
``enc_to_dec_proj(T5(input_ids, attention_mask)) * attention_mask`` and masks cross-attention with the
same ``attention_mask``. audiocraft's cross-attention has no mask: the testbed's conditioner pads every
prompt to a fixed number of word slots whose vectors are zero, and the LM attends to all of them (a
zero key adds ``exp(0)`` to the softmax denominator). The two agree exactly when every prompt reaches
the text encoder as exactly ``slots`` tokens with an attention mask of ones and the padding slots come
out as zero vectors. So the tokenizer made here fills each prompt to ``slots`` words itself, with
``<pad>`` words that are real tokens (mask 1), in its normalizer (standard ``tokenizers`` parts, no
custom code): ``processor(text=[...], padding=True)`` then pads nothing, and every prompt is
batch-invariant, as with audiocraft.

Token ids follow T5's convention: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then the testbed's words.
Words are split on anything but letters and digits (the word conditioner's rule). An unknown word maps
to ``<unk>``, whose vector is zero like a padding slot, so it is ignored (audiocraft's word conditioner
raises instead); a prompt of more than ``slots`` words is not cut (audiocraft raises).

The word conditioner is exactly a T5 encoder with no blocks: embedding look-up, then T5's RMS
norm. :func:`word_conditioner_as_t5` writes it so (two extra embedding dimensions give every row the
same RMS, so the norm is a constant scale the conversion undoes, and carry the cancellation of the
projection's bias on ``<pad>`` / ``<unk>``). A testbed whose conditioner already is a T5 encoder saved
with its tokenizer in ``weights/text_encoder/`` (``save_pretrained``) is read from there
(:func:`testbed_text_encoder`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
import copy
from mstools.testbed.conditioner import WordConditioner
from mstools.testbed.model import WEIGHTS_DIR

__all__ = ["SPECIALS", "fixed_slot_tokenizer", "word_conditioner_as_t5", "testbed_text_encoder",
           "fills_slots", "TEXT_ENCODER_DIR"]

#: T5's special tokens, in id order.
SPECIALS = ("<pad>", "</s>", "<unk>")
#: Where a testbed with a T5 text encoder keeps it (``save_pretrained`` of model and tokenizer).
TEXT_ENCODER_DIR = "text_encoder"


def fixed_slot_tokenizer(vocabulary: Sequence[str], slots: int) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` that gives every prompt of at most ``slots`` words
    exactly ``slots`` tokens: ``<pad>`` words first (mask 1), then the prompt's words.

    The filling is done by ``Replace`` normalizers with regular expressions (one per word count), so
    the saved ``tokenizer.json`` is read by ``AutoTokenizer`` / ``AutoProcessor`` with no mstools code.
    An empty prompt gives no tokens (``padding=True`` then masks its row entirely: the null condition).

    >>> tok = fixed_slot_tokenizer(["rock", "jazz", "fast"], slots=4)
    >>> tok(["Fast rock!"])["input_ids"], tok(["Fast rock!"])["attention_mask"]
    ([[0, 0, 5, 3]], [[1, 1, 1, 1]])
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers  # lazy: transformers is loaded only where it is used
    from transformers import PreTrainedTokenizerFast  # lazy: transformers is loaded only where it is used

    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    vocab = {w: i for i, w in enumerate(list(SPECIALS) + [w for w in vocabulary if w not in SPECIALS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    fills = []
    for k in range(slots - 1, -1, -1):  # most words first: once filled, no later rule matches
        pattern = r"^\s*$" if k == 0 else r"^(?=\s*(?:\S+\s+){%d}\S+\s*$)" % (k - 1)
        fills.append(normalizers.Replace(Regex(pattern), " <pad>" * (slots - k) + " "))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z0-9]+"), " ")]
        + fills)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512, padding_side="right")


def word_conditioner_as_t5(conditioner: nn.Module) -> tuple[Any, Any, nn.Linear]:
    """The testbed's :class:`~mstools.testbed.conditioner.WordConditioner` as ``(T5EncoderModel,
    tokenizer, enc_to_dec_proj)``: ``proj(t5(ids).last_hidden_state)`` equals the conditioner's output
    for every word (to float rounding) and is zero on ``<pad>`` and ``<unk>``.

    T5 dimension ``d = dim + 2``: word ``w`` embeds as ``[E_w, c_w, 0]`` with ``c_w`` chosen so every
    row has RMS ``R``; ``<pad>``/``<unk>`` as ``[0, 0, R * sqrt(d)]``. T5's final RMS norm divides by
    ``sqrt(R^2 + eps)``; its weight multiplies it back. The projection reads the first ``dim``
    coordinates with the conditioner's ``output_proj`` and the last one with ``-bias / (R sqrt(d))``.
    """
    from transformers import T5Config, T5EncoderModel  # lazy: transformers is loaded only where it is used

    embed = conditioner.embed.weight.detach().double()          # [1 + words, dim]; row 0 = padding
    lin = conditioner.output_proj
    words = list(conditioner.vocabulary)
    dim = embed.shape[1]
    d = dim + 2
    vocab_size = len(SPECIALS) + len(words)
    norms = embed[1:].norm(dim=-1)
    rms = float(max(norms.max(), 1e-3)) * 1.25 / math.sqrt(d)   # every row reaches this RMS
    table = torch.zeros(vocab_size, d, dtype=torch.float64)
    table[len(SPECIALS):, :dim] = embed[1:]
    table[len(SPECIALS):, dim] = (d * rms ** 2 - norms ** 2).sqrt()
    table[:len(SPECIALS), dim + 1] = rms * math.sqrt(d)         # <pad> </s> <unk>
    config = T5Config(vocab_size=vocab_size, d_model=d, d_kv=8, d_ff=4 * d, num_layers=0,
                      num_heads=1, dropout_rate=0.0, layer_norm_epsilon=1e-6,
                      feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, is_encoder_decoder=False)
    with torch.random.fork_rng(devices=[]):
        t5 = T5EncoderModel(config).eval()
    eps = config.layer_norm_epsilon
    with torch.no_grad():
        t5.shared.weight.copy_(table.float())
        t5.encoder.embed_tokens.weight = t5.shared.weight
        t5.encoder.final_layer_norm.weight.fill_(math.sqrt(rms ** 2 + eps))
    proj = nn.Linear(d, lin.out_features, bias=True)
    with torch.no_grad():
        proj.weight.zero_()
        proj.weight[:, :dim] = lin.weight.detach()
        bias = lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features)
        proj.weight[:, dim + 1] = -bias.double() / (rms * math.sqrt(d))
        proj.bias.copy_(bias)
    return t5, fixed_slot_tokenizer(words, int(conditioner.slots)), proj


def fills_slots(tokenizer: Any, slots: int) -> bool:
    """Whether ``tokenizer`` itself gives every short prompt ``slots`` tokens with mask 1 (then
    transformers' padding and masking read a prompt exactly as audiocraft's unmasked slots do)."""
    out = tokenizer(["a", ""], padding=True)
    return len(out["input_ids"][0]) == slots and all(out["attention_mask"][0])


def testbed_text_encoder(musicgen: Any, weights_dir: str | Path | None = None
                         ) -> tuple[Any, Any, nn.Linear]:
    """``(T5EncoderModel, tokenizer, enc_to_dec_proj)`` of a testbed MusicGen's text condition.

    A word conditioner is converted (:func:`word_conditioner_as_t5`). A conditioner that holds a
    transformers T5 encoder and tokenizer (attributes ``t5`` and ``tokenizer``) gives
    copies of them; otherwise they are loaded from ``weights_dir / "text_encoder"``. The
    conditioner's ``output_proj`` becomes ``enc_to_dec_proj``.
    """
    conditioner = musicgen.lm.condition_provider.conditioners["description"]
    if isinstance(conditioner, WordConditioner):
        return word_conditioner_as_t5(conditioner)
    if hasattr(conditioner, "t5") and hasattr(conditioner, "tokenizer"):
        t5 = copy.deepcopy(conditioner.t5).cpu().eval()
        tokenizer = copy.deepcopy(conditioner.tokenizer)
    else:
        from transformers import AutoTokenizer, T5EncoderModel  # lazy: transformers is loaded only where it is used
        folder = Path(weights_dir or WEIGHTS_DIR) / TEXT_ENCODER_DIR
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"the testbed's conditioner is a {type(conditioner).__name__}, "
                                    f"not a word conditioner, and {folder} holds no T5 encoder")
        t5 = T5EncoderModel.from_pretrained(str(folder), use_safetensors=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lin = conditioner.output_proj
    proj = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    proj.load_state_dict(lin.state_dict())
    return t5, tokenizer, proj.to(next(t5.parameters()).device)
