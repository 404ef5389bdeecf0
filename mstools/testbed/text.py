"""The testbed's text encoder: a tiny transformers ``T5EncoderModel`` with a word-level tokenizer.

Both are standard transformers objects, saved with ``save_pretrained`` in
``weights/text_encoder/`` (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``), so ``transformers.AutoTokenizer.from_pretrained(folder)`` and
``T5EncoderModel.from_pretrained(folder)`` load them offline without mstools.

Tokenizer (built with the ``tokenizers`` library, loaded as a ``PreTrainedTokenizerFast``): T5's
special ids (``<pad>`` 0, ``</s>`` 1 appended to every prompt, ``<unk>`` 2); NFKC + lower-casing,
ASCII punctuation becomes a space, words are split on whitespace; every word of the training
captions (:data:`mstools.testbed.captions.CAPTION_WORDS`) has an id and any other word is
``<unk>`` ("café", "流行音乐", "🎸"), so an unknown word is seen as one rather than vanishing.
(transformers' ``T5Tokenizer`` class rebuilds a SentencePiece-style unigram pipeline from the
vocabulary, which would split unknown words into known pieces and drop the lower-casing; the
folder therefore names ``PreTrainedTokenizerFast``.)

:class:`T5TextConditioner` is the audiocraft conditioner (condition name ``description``) around
them: tokenize, pad to exactly ``slots`` positions, run T5 with its attention mask, project with
``output_proj`` (``Linear(d_model, LM dim)`` with bias, transformers' ``enc_to_dec_proj``), multiply
by the mask. The null condition (text ``None``, classifier-free guidance's unconditional branch)
is all zeros with mask 0.

Padding: audiocraft's cross-attention has no padding mask, so the zero vectors of the padding
slots are attended to (key 0, logit 0) and dilute the attention paid to the words; transformers
masks them out. With a fixed number of slots a prompt's condition never depends on its batch; the
testbed is trained with a random number of padding slots (none included) so that both ways of
reading the same prompt give the same model behaviour.

Example:

>>> tok = build_tokenizer()
>>> tok("Soft, classical PIANO café")["input_ids"][-2:], tok.unk_token_id, tok.eos_token_id
([2, 1], 2, 1)
>>> cond = T5TextConditioner(build_text_encoder(tok), tok, output_dim=32)
>>> inputs = cond.tokenize(["fast rock with brass", None])
>>> emb, mask = cond(inputs)                       # [2, 16, 32]; row 1 is all zeros
>>> mask.sum(-1).tolist()
[5, 0]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import tempfile
import typing as tp

import torch
from audiocraft.modules.conditioners import ConditionType, TextConditioner

from mstools.testbed.captions import CAPTION_WORDS
from mstools.testbed.music import VOCABULARY

__all__ = ["PAD_ID", "EOS_ID", "UNK_ID", "SPECIAL_TOKENS", "TEXT_CONFIG", "TOKENIZER_WORDS",
           "build_tokenizer", "build_text_encoder", "load_text_encoder", "save_text_encoder",
           "T5TextConditioner", "TEXT_ENCODER_FILES"]

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
#: Words with their own id (in this order after the special tokens).
TOKENIZER_WORDS: tuple[str, ...] = tuple(dict.fromkeys(list(VOCABULARY) + list(CAPTION_WORDS)))
#: Files ``save_text_encoder`` writes (and the manifest checksums).
TEXT_ENCODER_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json")

#: T5 encoder shape and the number of padding slots (``slots``) every prompt is padded to.
TEXT_CONFIG: dict[str, tp.Any] = {
    "d_model": 64, "num_layers": 2, "num_heads": 4, "d_kv": 16, "d_ff": 128,
    "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16, "slots": 16,
}
_PUNCTUATION = r"[!-/:-@\[-`{-~]"   # ASCII punctuation and symbols


def build_tokenizer(words: tp.Sequence[str] = TOKENIZER_WORDS, max_length: int = TEXT_CONFIG["slots"]) -> tp.Any:
    """The word-level T5-style tokenizer (a transformers ``PreTrainedTokenizerFast``).

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then ``words`` in order. ``max_length`` is stored
    as ``model_max_length`` (the conditioner's slot count).
    """
    # lazy: transformers/tokenizers load only when the T5 text encoder is built
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w != w.lower() or not w.isalnum():
            raise ValueError(f"tokenizer words must be lower-case letters/digits, got {w!r}")
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                            normalizers.Replace(Regex(_PUNCTUATION), " ")])
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                        special_tokens=[("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=int(max_length),
                                   padding_side="right")


def _t5_config(vocab_size: int, text: dict) -> tp.Any:
    # lazy: transformers/tokenizers load only when the T5 text encoder is built
    from transformers import T5Config
    return T5Config(vocab_size=vocab_size, d_model=text["d_model"], d_kv=text["d_kv"], d_ff=text["d_ff"],
                    num_layers=text["num_layers"], num_heads=text["num_heads"],
                    relative_attention_num_buckets=text["relative_attention_num_buckets"],
                    relative_attention_max_distance=text["relative_attention_max_distance"],
                    dropout_rate=0.0, feed_forward_proj="relu", is_encoder_decoder=False,
                    use_cache=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)


def build_text_encoder(tokenizer: tp.Any, text: dict | None = None) -> tp.Any:
    """A randomly initialised ``T5EncoderModel`` for ``tokenizer``'s vocabulary (uses the global RNG;
    :func:`mstools.testbed.build_testbed_musicgen` seeds it). ``text``: :data:`TEXT_CONFIG` keys."""
    # lazy: transformers/tokenizers load only when the T5 text encoder is built
    from transformers import T5EncoderModel
    cfg = {**TEXT_CONFIG, **(text or {})}
    return T5EncoderModel(_t5_config(len(tokenizer), cfg)).eval()


def save_text_encoder(encoder: tp.Any, tokenizer: tp.Any, folder: str | os.PathLike) -> Path:
    """``save_pretrained`` of the encoder (float32 safetensors) and the tokenizer into ``folder``.

    Written into a temporary folder first, then moved file by file (each move is atomic).
    ``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` (see the module docstring).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg_path = Path(tmp) / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg.pop("backend", None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for name in TEXT_ENCODER_FILES:
            if not (Path(tmp) / name).exists():
                raise RuntimeError(f"save_pretrained did not write {name}")
        for extra in Path(tmp).iterdir():
            if extra.name not in TEXT_ENCODER_FILES:
                extra.unlink() if extra.is_file() else shutil.rmtree(extra)
        for name in TEXT_ENCODER_FILES:
            os.chmod(Path(tmp) / name, 0o644)
            os.replace(Path(tmp) / name, folder / name)
    return folder


def load_text_encoder(folder: str | os.PathLike) -> tuple[tp.Any, tp.Any]:
    """``(T5EncoderModel, tokenizer)`` from a folder written by :func:`save_text_encoder` (offline).

    Example:
        >>> encoder, tokenizer = load_text_encoder(WEIGHTS_DIR / "text_encoder")   # doctest: +SKIP
    """
    # lazy: transformers/tokenizers load only when the T5 text encoder is built
    from transformers import AutoTokenizer, T5EncoderModel
    folder = Path(folder)
    missing = [n for n in TEXT_ENCODER_FILES if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; it is written by "
                                "mstools.testbed.train (save_text_encoder)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoder = T5EncoderModel.from_pretrained(str(folder), local_files_only=True).eval()
    return encoder, tokenizer


class T5TextConditioner(TextConditioner):
    """audiocraft text conditioner around a transformers ``T5EncoderModel`` and its tokenizer.

    Args:
        t5: the ``T5EncoderModel`` (a submodule: its weights are part of the LM's state dict under
            ``condition_provider.conditioners.description.t5.``).
        tokenizer: a transformers tokenizer with T5's special ids (pad 0, eos appended).
        output_dim: the LM's ``dim``; ``output_proj`` maps ``t5.config.d_model`` to it.
        slots: every prompt is padded to exactly this many token positions.

    ``tokenize(list[str | None]) -> {"input_ids": [B, slots] long, "attention_mask": [B, slots] long}``
    (raises ``ValueError`` for a prompt with more than ``slots`` tokens, eos included);
    ``forward(inputs) -> (condition [B, L, output_dim], mask [B, L])`` for any width L of the inputs.
    """

    def __init__(self, t5: tp.Any, tokenizer: tp.Any, output_dim: int, slots: int = TEXT_CONFIG["slots"]):
        super().__init__(int(t5.config.d_model), output_dim)
        self.t5 = t5
        self.tokenizer = tokenizer
        self.slots = int(slots)

    def token_ids(self, text: str) -> list[int]:
        """Ids of one prompt (eos included)."""
        return list(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def tokenize(self, x: tp.List[tp.Optional[str]]) -> dict[str, torch.Tensor]:
        device = self.output_proj.weight.device
        ids = torch.full((len(x), self.slots), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(x), self.slots), dtype=torch.long)
        for row, text in enumerate(x):
            if text is None:
                continue
            tokens = self.token_ids(str(text))
            if len(tokens) > self.slots:
                raise ValueError(f"prompt {text!r} has {len(tokens)} tokens (end-of-text included); "
                                 f"the testbed's text conditioner holds at most {self.slots}: shorten the prompt")
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> ConditionType:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        hidden = self.t5(input_ids=ids, attention_mask=mask).last_hidden_state
        embeds = self.output_proj(hidden.to(self.output_proj.weight.dtype))
        return embeds * mask.unsqueeze(-1).to(embeds.dtype), mask
