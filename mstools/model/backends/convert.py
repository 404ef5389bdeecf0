"""Weight mapping between audiocraft's ``LMModel`` and transformers' ``MusicgenForCausalLM``.

It is the mapping transformers itself uses to convert audiocraft checkpoints
(``convert_musicgen_transformers.py``): the same transformer, renamed, with audiocraft's packed
``in_proj_weight`` ([3D, D], rows q | k | v) split into ``q_proj`` / ``k_proj`` / ``v_proj``.

======================================================  =============================================
audiocraft ``LMModel``                                  transformers ``MusicgenForCausalLM``
======================================================  =============================================
``emb.{k}``                                             ``model.decoder.embed_tokens.{k}``
``transformer.layers.{i}.self_attn.in_proj_weight``     ``...layers.{i}.self_attn.{q,k,v}_proj.weight``
``transformer.layers.{i}.self_attn.out_proj``           ``...layers.{i}.self_attn.out_proj``
``transformer.layers.{i}.cross_attention.in_proj_weight``  ``...layers.{i}.encoder_attn.{q,k,v}_proj.weight``
``transformer.layers.{i}.cross_attention.out_proj``     ``...layers.{i}.encoder_attn.out_proj``
``transformer.layers.{i}.norm1`` / ``norm_cross`` / ``norm2``  ``self_attn_layer_norm`` / ``encoder_attn_layer_norm`` / ``final_layer_norm``
``transformer.layers.{i}.linear1`` / ``linear2``        ``fc1`` / ``fc2``
``out_norm``                                            ``model.decoder.layer_norm``
``linears.{k}``                                         ``lm_heads.{k}``
``condition_provider.conditioners.description.output_proj``  ``enc_to_dec_proj`` (composite model)
======================================================  =============================================

Both use sinusoidal positions (cos | sin halves, max period 10000), pre-norm layers, no biases
in attention or the MLP, and the special token ``card`` (= transformers' ``pad`` = ``bos``). The MLP activation is read from the
layer (released checkpoints use GELU; the testbed ReLU, PyTorch's default).

>>> decoder = decoder_from_audiocraft(model.lm)          # the testbed's LM as a MusicgenForCausalLM
>>> type(decoder).__name__
'MusicgenForCausalLM'
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["audiocraft_to_transformers", "transformers_to_audiocraft", "decoder_config_from_audiocraft",
           "decoder_from_audiocraft"]

_PROJ = "condition_provider.conditioners.description.output_proj"
#: audiocraft prefix -> transformers prefix, outside the layers
_TOP = [("emb.", "model.decoder.embed_tokens."), ("linears.", "lm_heads."),
        ("out_norm.", "model.decoder.layer_norm."), (_PROJ + ".", "enc_to_dec_proj.")]
_AC_LAYERS, _HF_LAYERS = "transformer.layers.", "model.decoder.layers."
#: inside a layer
_LAYER_RENAMES = [
    ("self_attn.out_proj.", "self_attn.out_proj."),
    ("cross_attention.out_proj.", "encoder_attn.out_proj."),
    ("linear1.", "fc1."), ("linear2.", "fc2."),
    ("norm1.", "self_attn_layer_norm."), ("norm_cross.", "encoder_attn_layer_norm."),
    ("norm2.", "final_layer_norm."),
]
#: attention blocks whose audiocraft ``in_proj_weight`` packs q | k | v
_ATTN = [("self_attn", "self_attn"), ("cross_attention", "encoder_attn")]


def _rename(key: str, to_transformers: bool) -> str | None:
    """The key's name in the other library (None: no counterpart), packed q|k|v aside."""
    def pairs(table):
        return table if to_transformers else [(b, a) for a, b in table]
    for src, dst in pairs(_TOP):
        if key.startswith(src):
            return dst + key[len(src):]
    ((src_layers, dst_layers),) = pairs([(_AC_LAYERS, _HF_LAYERS)])
    if key.startswith(src_layers):
        layer, rest = key[len(src_layers):].split(".", 1)
        for src, dst in pairs(_LAYER_RENAMES):
            if rest.startswith(src):
                return f"{dst_layers}{layer}.{dst}{rest[len(src):]}"
    return None


def audiocraft_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """audiocraft ``LMModel`` state dict -> transformers decoder state dict (+ ``enc_to_dec_proj.*``).

    Conditioner weights other than the description projection are dropped (they live in the text
    encoder). Unknown LM keys raise ``ValueError`` (a layout this mapping does not cover).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(\w+)\.in_proj_weight", key)
        hf_attn = dict(_ATTN).get(m[2]) if m else None
        if hf_attn:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{_HF_LAYERS}{m[1]}.{hf_attn}.{name}_proj.weight"] = part.clone()
            continue
        new = _rename(key, to_transformers=True)
        if new is not None:
            out[new] = value
        elif not key.startswith("condition_provider."):
            raise ValueError(f"no transformers counterpart for audiocraft weight {key!r}: this "
                             "LM layout (biases, layer scale, nn.MultiheadAttention) is not "
                             "MusicGen's")
    return out


def transformers_to_audiocraft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`audiocraft_to_transformers` (decoder keys, and ``enc_to_dec_proj.*``).

    Takes a ``MusicgenForCausalLM`` or a composite model's state dict (``decoder.`` prefix).
    Buffers and weights without an audiocraft counterpart (positional tables) are skipped.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    composite = any(k.startswith("decoder.") for k in state)
    for key, value in state.items():
        if composite and key.startswith("decoder."):
            key = key[len("decoder."):]
        m = re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(\w+)\.([qkv])_proj\.weight", key)
        if m:
            qkv.setdefault((m[1], m[2]), {})[m[3]] = value
            continue
        new = _rename(key, to_transformers=False)
        if new is not None:
            out[new] = value
    ac_attn = {hf: ac for ac, hf in _ATTN}
    for (layer, attn), parts in qkv.items():
        out[f"{_AC_LAYERS}{layer}.{ac_attn[attn]}.in_proj_weight"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def decoder_config_from_audiocraft(lm: nn.Module, *, max_positions: int = 2048) -> Any:
    """``MusicgenDecoderConfig`` of an audiocraft ``LMModel`` (pad = bos = card)."""
    from transformers import MusicgenDecoderConfig  # lazy: transformers is loaded only where it is used
    layer = lm.transformer.layers[0]
    if getattr(lm.transformer, "positional_embedding", "sin") != "sin":
        raise ValueError("only sinusoidal positions map to transformers' MusicGen")
    card = int(lm.card)
    return MusicgenDecoderConfig(
        vocab_size=card, hidden_size=int(lm.dim), num_hidden_layers=len(lm.transformer.layers),
        num_attention_heads=int(layer.self_attn.num_heads), ffn_dim=int(layer.linear1.out_features),
        num_codebooks=int(lm.num_codebooks), max_position_embeddings=max_positions,
        activation_function=_activation_name(layer), dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        layerdrop=0.0, pad_token_id=card, bos_token_id=card, decoder_start_token_id=card,
        audio_channels=1, tie_word_embeddings=False)


def _activation_name(layer: nn.Module) -> str:
    """audiocraft layers keep PyTorch's ``activation`` (a function or a module)."""
    act = getattr(layer, "activation", F.relu)
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or isinstance(act, nn.GELU):
        return "gelu"
    raise ValueError(f"activation {act!r} has no transformers MusicGen counterpart")


def decoder_from_audiocraft(lm: nn.Module, *, max_positions: int = 2048) -> Any:
    """A ``MusicgenForCausalLM`` holding an audiocraft ``LMModel``'s weights (eval mode)."""
    from transformers import GenerationConfig, MusicgenForCausalLM  # lazy: transformers is loaded only where it is used
    config = decoder_config_from_audiocraft(lm, max_positions=max_positions)
    with torch.random.fork_rng(devices=[]):
        decoder = MusicgenForCausalLM(config)
    state = {k: v for k, v in audiocraft_to_transformers(lm.state_dict()).items()
             if not k.startswith("enc_to_dec_proj.")}
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("embed_positions.weights")]
    if missing or unexpected:
        raise ValueError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    card = int(lm.card)
    decoder.generation_config = GenerationConfig(
        pad_token_id=card, bos_token_id=card, decoder_start_token_id=card, do_sample=True,
        guidance_scale=3.0, top_k=min(250, card), max_length=1500)
    return decoder.eval()
