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

>>> decoder = decoder_from_audiocraft(load_musicgen("testbed").lm)   # MusicgenForCausalLM
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

__all__ = ["audiocraft_to_transformers", "transformers_to_audiocraft", "decoder_config_from_audiocraft",
           "decoder_from_audiocraft"]

_LAYER_RENAMES = [
    ("self_attn.out_proj", "self_attn.out_proj"),
    ("cross_attention.out_proj", "encoder_attn.out_proj"),
    ("linear1", "fc1"), ("linear2", "fc2"),
    ("norm1", "self_attn_layer_norm"), ("norm_cross", "encoder_attn_layer_norm"),
    ("norm2", "final_layer_norm"),
]
_PROJ = "condition_provider.conditioners.description.output_proj"
_HF_LAYERS = "model.decoder.layers"


def audiocraft_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """audiocraft ``LMModel`` state dict -> transformers decoder state dict (+ ``enc_to_dec_proj.*``).

    Conditioner weights other than the description projection are dropped (they live in the text
    encoder). Unknown LM keys raise ``ValueError`` (a layout this mapping does not cover).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("condition_provider."):
            if key.startswith(_PROJ + "."):
                out["enc_to_dec_proj." + key[len(_PROJ) + 1:]] = value
            continue
        m = re.fullmatch(r"emb\.(\d+)\.weight", key)
        if m:
            out[f"model.decoder.embed_tokens.{m[1]}.weight"] = value
            continue
        m = re.fullmatch(r"linears\.(\d+)\.weight", key)
        if m:
            out[f"lm_heads.{m[1]}.weight"] = value
            continue
        m = re.fullmatch(r"out_norm\.(weight|bias)", key)
        if m:
            out[f"model.decoder.layer_norm.{m[1]}"] = value
            continue
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.in_proj_weight", key)
        if m:
            attn = "self_attn" if m[2] == "self_attn" else "encoder_attn"
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{_HF_LAYERS}.{m[1]}.{attn}.{name}_proj.weight"] = part.clone()
            continue
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", key)
        if m:
            for old, new in _LAYER_RENAMES:
                if m[2].startswith(old + "."):
                    out[f"{_HF_LAYERS}.{m[1]}.{new}{m[2][len(old):]}"] = value
                    break
            else:
                raise ValueError(f"no transformers counterpart for audiocraft weight {key!r}: this "
                                 "LM layout (biases, layer scale, nn.MultiheadAttention) is not "
                                 "MusicGen's")
            continue
        raise ValueError(f"no transformers counterpart for audiocraft weight {key!r}")
    return out


def transformers_to_audiocraft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`audiocraft_to_transformers` (decoder keys, and ``enc_to_dec_proj.*``).

    Keys are re-ordered the audiocraft way is not needed: callers compare dicts, not order.
    Buffers and weights without an audiocraft counterpart (positional tables) are skipped.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    prefix = ""
    if any(k.startswith("decoder.") for k in state):  # a composite model's state dict
        prefix = "decoder."
    for key, value in state.items():
        if key.startswith("enc_to_dec_proj."):
            out[_PROJ + key[len("enc_to_dec_proj"):]] = value
            continue
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        m = re.fullmatch(r"model\.decoder\.embed_tokens\.(\d+)\.weight", k)
        if m:
            out[f"emb.{m[1]}.weight"] = value
            continue
        m = re.fullmatch(r"lm_heads\.(\d+)\.weight", k)
        if m:
            out[f"linears.{m[1]}.weight"] = value
            continue
        m = re.fullmatch(r"model\.decoder\.layer_norm\.(weight|bias)", k)
        if m:
            out[f"out_norm.{m[1]}"] = value
            continue
        m = re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn)\.([qkv])_proj\.weight", k)
        if m:
            qkv.setdefault((m[1], m[2]), {})[m[3]] = value
            continue
        m = re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(.+)", k)
        if m:
            for old, new in _LAYER_RENAMES:
                if m[2].startswith(new + "."):
                    out[f"transformer.layers.{m[1]}.{old}{m[2][len(new):]}"] = value
                    break
    for (layer, attn), parts in qkv.items():
        name = "self_attn" if attn == "self_attn" else "cross_attention"
        out[f"transformer.layers.{layer}.{name}.in_proj_weight"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def decoder_config_from_audiocraft(lm: nn.Module, *, max_positions: int = 2048) -> Any:
    """``MusicgenDecoderConfig`` of an audiocraft ``LMModel`` (pad = bos = card)."""
    from transformers import MusicgenDecoderConfig
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
    import torch.nn.functional as F
    act = getattr(layer, "activation", F.relu)
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or isinstance(act, nn.GELU):
        return "gelu"
    raise ValueError(f"activation {act!r} has no transformers MusicGen counterpart")


def decoder_from_audiocraft(lm: nn.Module, *, max_positions: int = 2048) -> Any:
    """A ``MusicgenForCausalLM`` holding an audiocraft ``LMModel``'s weights (eval mode)."""
    from transformers import GenerationConfig, MusicgenForCausalLM
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
