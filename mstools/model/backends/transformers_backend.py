"""The transformers backend: Hugging Face's ``MusicgenForCausalLM`` decoder, sampled by transformers'
own ``generate``, behind the same hook names, shapes, steps and CFG layout as audiocraft.

The decoder reads the text condition as ``encoder_hidden_states`` ``[B, L, D]``. Where they come
from is a :class:`TextEncoder`: T5 + ``enc_to_dec_proj`` (:class:`T5TextEncoder`, exactly what
``MusicgenForConditionalGeneration`` computes) for released checkpoints and for the testbed, which
becomes a standard composite (:func:`mstools.model.loading.testbed_on_transformers`, :mod:`mstools.model.composite`); or an
audiocraft conditioner (:class:`AudiocraftTextEncoder`) for audiocraft layouts with no transformers
text encoder (:func:`backend_from_audiocraft`). Audio goes through a :class:`Codec` (transformers'
EnCodec, or an audiocraft codec).

Generation calls ``MusicgenForCausalLM.generate`` with the condition rows ``[cond B | uncond B]``
(guidance doubles the batch, conditional rows first; unconditional rows are zeros with a zero mask,
as transformers does) and avoids three traps of transformers 5.23 met on this path:

- without an explicit cache it builds one ``DynamicCache`` that self- and cross-attention share, so
  cross-attention also attends to the decoder's own keys: an ``EncoderDecoderCache`` is passed;
- without an explicit decoder ``attention_mask`` it infers one from the pad token, which equals the
  start token, so step 0 is masked out: a mask of ones is passed;
- once a cache exists it feeds only the last input step, so the earlier steps of an audio prompt
  would be skipped: they are run through the decoder into the cache first.

``max_new_tokens`` counts delay steps: N frames need N + K - 1 new tokens.

>>> model = mstools.load_musicgen("testbed", backend="transformers")
>>> model.generate(["fast rock"], duration=1.0).codes.shape
torch.Size([1, 4, 10])
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mstools.model.backends.audiocraft_backend import AudiocraftBackend, token_lengths
from mstools.model.backends.base import Backend, Progress
from mstools.model.backends.convert import decoder_from_audiocraft, transformers_to_audiocraft

__all__ = ["TransformersBackend", "backend_from_composite", "backend_from_audiocraft",
           "TextEncoder", "T5TextEncoder", "AudiocraftTextEncoder", "Codec",
           "EncodecCodec", "AudiocraftCodec"]


# ---------------------------------------------------------------------- text
class TextEncoder:
    """Prompts -> ``encoder_hidden_states`` [B, L, D] (decoder width) and a mask [B, L] or None."""

    def encode(self, prompts: Sequence[str | None], *, null: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def token_lengths(self, prompt: str | None) -> tuple:
        return ()

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        return {}


class T5TextEncoder(TextEncoder):
    """What ``MusicgenForConditionalGeneration`` feeds its decoder: T5 states, projected by
    ``enc_to_dec_proj`` when widths differ, times the attention mask. A None prompt (and every row
    of the unconditional branch) is zeros with a zero mask."""

    def __init__(self, text_encoder: nn.Module, tokenizer: Any, proj: nn.Module | None,
                 reference: dict[str, torch.Tensor] | None = None, slots: int | None = None,
                 check_prompt: Any = None):
        self.text_encoder, self.tokenizer, self.proj = text_encoder, tokenizer, proj
        self.reference = reference
        self.slots = slots
        self.check_prompt = check_prompt  # raises for a prompt the model's own conditioner refuses

    def encode(self, prompts, *, null=False):
        """``slots`` set: audiocraft's reading of a T5 conditioner padded to fixed slots (pad to
        ``slots``, zero the padding, no mask for the decoder: it attends to the zero slots)."""
        texts = ["" if p is None else str(p) for p in prompts]
        if self.check_prompt is not None:
            for p in prompts:
                if p is not None:
                    self.check_prompt(str(p))
        if self.slots:
            tok = self.tokenizer(texts, return_tensors="pt", padding="max_length",
                                 max_length=self.slots)
        else:
            tok = self.tokenizer(texts, return_tensors="pt", padding=True)
        device = next(self.text_encoder.parameters()).device
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        if ids.shape[1] == 0:  # every prompt empty (a tokenizer without </s>): one masked slot
            ids = torch.zeros(len(texts), 1, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
        with torch.no_grad():
            hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            if self.proj is not None:
                hidden = self.proj(hidden)
        keep = torch.tensor([p is not None and not null for p in prompts], device=device)
        mask = mask * keep[:, None].to(mask.dtype)
        hidden = hidden * mask[..., None].to(hidden.dtype)
        return hidden, (None if self.slots else mask)

    def token_lengths(self, prompt):
        return (len(self.tokenizer("" if prompt is None else prompt)["input_ids"]),)

    def reference_state_dict(self):
        if self.reference is not None:  # the weights this encoder was made from (audiocraft names)
            return dict(self.reference)
        if self.proj is None:
            return {}
        return {f"enc_to_dec_proj.{k}": v for k, v in self.proj.state_dict().items()}


class AudiocraftTextEncoder(TextEncoder):
    """An audiocraft ``LMModel``'s own conditioners (the testbed's T5 conditioner): the
    cross-attention source audiocraft computes, unconditional rows as audiocraft nullifies them
    (``ClassifierFreeGuidanceDropout(p=1)``). No mask: audiocraft's cross-attention has none."""

    def __init__(self, musicgen: Any):
        self.musicgen = musicgen
        self.provider = musicgen.lm.condition_provider
        self.fuser = musicgen.lm.fuser

    def encode(self, prompts, *, null=False):
        from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout  # lazy: audiocraft is heavy; only this path needs it
        attrs, _ = self.musicgen._prepare_tokens_and_attributes(list(prompts), None)
        if null:
            attrs = ClassifierFreeGuidanceDropout(p=1.0)(attrs)
        with torch.no_grad():
            tensors = self.provider(self.provider.tokenize(attrs))
        cross = [tensors[name][0] for name in self.fuser.fuse2cond["cross"] if name in tensors]
        if not cross:
            raise ValueError("this LM has no cross-attention condition to map to encoder states")
        return torch.cat(cross, dim=1), None

    def token_lengths(self, prompt):
        return token_lengths(self.musicgen.lm, prompt)

    def reference_state_dict(self):
        return {f"condition_provider.{k}": v for k, v in self.provider.state_dict().items()}


# ---------------------------------------------------------------------- audio
class Codec:
    """Audio [B, C, N] <-> codes [B, K, T]."""

    sample_rate: int
    frame_rate: float
    channels: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EncodecCodec(Codec):
    """transformers' ``EncodecModel`` (no chunking: one frame group)."""

    def __init__(self, encodec: nn.Module):
        self.encodec = encodec
        cfg = encodec.config
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = float(cfg.frame_rate)
        self.channels = int(cfg.audio_channels)

    def encode(self, wav):
        with torch.no_grad():
            out = self.encodec.encode(wav.to(next(self.encodec.parameters()).device))
        return out.audio_codes[0]

    def decode(self, codes):
        with torch.no_grad():
            return self.encodec.decode(codes[None], [None] * codes.shape[0]).audio_values


class AudiocraftCodec(Codec):
    """An audiocraft ``CompressionModel`` (the testbed's synth codec)."""

    def __init__(self, compression_model: nn.Module):
        self.model = compression_model
        self.sample_rate = int(compression_model.sample_rate)
        self.frame_rate = float(compression_model.frame_rate)
        self.channels = int(compression_model.channels)

    def encode(self, wav):
        with torch.no_grad():
            return self.model.encode(wav)[0]

    def decode(self, codes):
        with torch.no_grad():
            return self.model.decode(codes, None)


class _ProgressStreamer:
    """transformers streamer that reports generated steps (its first ``put`` is the prompt)."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total, self.done, self.started = progress, total, 0, False

    def put(self, value: torch.Tensor) -> None:
        if not self.started:
            self.started = True
            return
        self.done += 1
        self.progress(self.done, self.total)

    def end(self) -> None:
        self.progress(self.total, self.total)


# ---------------------------------------------------------------------- backend
class TransformersBackend(Backend):
    """A transformers ``MusicgenForCausalLM`` with its text encoder and codec.

    Args:
        decoder: ``MusicgenForCausalLM`` (``MusicgenForConditionalGeneration.decoder``), eval mode.
        text: where ``encoder_hidden_states`` come from.
        codec: audio <-> codes.
        max_duration: longest generation (s).
        defaults: generation parameters (audiocraft's names: ``use_sampling``, ``top_k``, ``top_p``,
            ``temperature``, ``cfg_coef``, ``duration``).
        composite: the ``MusicgenForConditionalGeneration`` the parts came from, if any.
    """

    name = "transformers"

    def __init__(self, decoder: nn.Module, text: TextEncoder, codec: Codec, *, max_duration: float,
                 defaults: dict[str, Any], composite: nn.Module | None = None):
        self.lm = decoder
        self.text = text
        self.codec = codec
        self.composite = composite
        cfg = decoder.config
        if cfg.audio_channels != 1:
            raise NotImplementedError("stereo MusicGen (interleaved codebooks) is supported by the "
                                      "audiocraft backend only")
        if not (cfg.pad_token_id == cfg.bos_token_id == cfg.vocab_size):
            raise ValueError(f"decoder config needs pad_token_id == bos_token_id == vocab_size "
                             f"({cfg.vocab_size}), got pad {cfg.pad_token_id}, bos {cfg.bos_token_id}")
        self.clock_module = decoder.model.decoder
        self.num_layers = int(cfg.num_hidden_layers)
        self.d_model = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_codebooks = int(cfg.num_codebooks)
        self.card = int(cfg.vocab_size)
        self.special_token_id = int(cfg.pad_token_id)
        self.frame_rate = codec.frame_rate
        self.sample_rate = codec.sample_rate
        self.channels = codec.channels
        self.max_duration = float(max_duration)
        self.defaults = dict(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0,
                             two_step_cfg=False, duration=min(15.0, self.max_duration))
        self.defaults.update(defaults)

    @property
    def decoder(self) -> nn.Module:
        """The ``MusicgenForCausalLM`` (the module tree the hook sites refer to, ``lm``)."""
        return self.lm

    def read_steps(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int]:
        ids = kwargs.get("input_ids", args[0] if args else None)
        past = kwargs.get("past_key_values")
        start = int(past.get_seq_length()) if past is not None else 0
        return start, int(ids.shape[-1]) if ids is not None else int(kwargs["inputs_embeds"].shape[1])

    def prompt_token_lengths(self, prompt):
        return self.text.token_lengths(prompt)

    def module_label(self, path: str) -> str:
        return f"decoder.{path}" if path else "decoder"

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        state = transformers_to_audiocraft(self.decoder.state_dict())
        state.update(self.text.reference_state_dict())
        return state

    # ------------------------------------------------------------------ running
    def logits(self, seq: torch.Tensor, prompts: Sequence[str | None]) -> torch.Tensor:
        b, k, s = seq.shape
        hidden, mask = self.text.encode(prompts)
        with torch.no_grad():
            out = self.decoder(input_ids=seq.reshape(b * k, s), encoder_hidden_states=hidden,
                               encoder_attention_mask=mask, use_cache=False)
        return out.logits.reshape(b, k, s, -1)

    def generate(self, prompts: list[str | None], duration: float, params: dict[str, Any], *,
                 audio_prompt: tuple[torch.Tensor, int] | None, decode: bool,
                 progress: Progress | None) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import GenerationConfig  # lazy: transformers is loaded only where it is used
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        b, k = len(prompts), self.num_codebooks
        device = self.decoder.device
        cfg_coef = float(params["cfg_coef"])
        if cfg_coef < 1:
            raise ValueError(f"cfg_coef {cfg_coef} < 1: transformers' sampler applies guidance only "
                             "for a scale above 1; use cfg_coef >= 1 or the audiocraft backend")
        guided = cfg_coef > 1
        hidden, mask = self.text.encode(prompts)
        if guided:
            null_hidden, null_mask = self.text.encode(prompts, null=True)
            hidden = torch.cat([hidden, null_hidden])
            mask = None if mask is None else torch.cat([mask, null_mask])
        frames = int(duration * self.frame_rate)  # as audiocraft: int(duration * frame_rate)
        start = torch.full((b, k, 1), self.special_token_id, dtype=torch.long, device=device)
        if audio_prompt is not None:
            prompt_codes = self.encode_audio(audio_prompt[0].to(device))
            if prompt_codes.shape[-1] >= frames:
                raise ValueError(f"the audio prompt ({prompt_codes.shape[-1]} frames) is as long as "
                                 f"the requested duration ({frames} frames): ask for a longer one")
            start = torch.cat([start, prompt_codes], dim=-1)
        new_frames = frames - (start.shape[-1] - 1)
        sampling = bool(params["use_sampling"]) and float(params["temperature"]) > 0
        gen = dict(max_new_tokens=new_frames + k - 1, do_sample=sampling, num_return_sequences=1,
                   pad_token_id=self.special_token_id, bos_token_id=self.special_token_id,
                   decoder_start_token_id=self.special_token_id, use_cache=True,
                   guidance_scale=cfg_coef if guided else None)
        if sampling:
            top_p, top_k = float(params.get("top_p") or 0.0), int(params.get("top_k") or 0)
            gen.update(temperature=float(params["temperature"]),
                       top_k=top_k if top_k > 0 and top_p <= 0 else None,
                       top_p=top_p if top_p > 0 else None)
        ids = start.reshape(b * k, -1)
        streamer = _ProgressStreamer(progress, gen["max_new_tokens"]) if progress else None
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        with torch.no_grad():
            if start.shape[-1] > 1:
                # an audio prompt: transformers feeds only the last input step once a cache exists,
                # so the earlier prompt steps go through the decoder here first
                self._prefill(start[..., 1:], hidden, mask, cache, 2 if guided else 1)
            codes = self.decoder.generate(
                ids, generation_config=GenerationConfig(**gen), encoder_hidden_states=hidden,
                encoder_attention_mask=mask, attention_mask=torch.ones_like(ids),
                past_key_values=cache, streamer=streamer)
        codes = codes.reshape(b, k, -1)
        audio = self.decode_codes(codes) if decode else torch.zeros(b, self.channels, 0)
        return codes, audio

    def _prefill(self, prompt_codes: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None,
                 cache: Any, copies: int) -> None:
        """Run input steps ``[0, P)`` of a P-frame prompt (delay pattern) into ``cache``."""
        b, k, p = prompt_codes.shape
        steps = self.to_sequence(prompt_codes)[..., :p]
        steps = torch.cat([steps] * copies).reshape(copies * b * k, p)
        self.decoder(input_ids=steps, encoder_hidden_states=hidden, encoder_attention_mask=mask,
                     past_key_values=cache, use_cache=True)

    def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(wav)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(codes)


def backend_from_composite(model: nn.Module, tokenizer: Any, *, max_duration: float = 30.0,
                           defaults: dict[str, Any] | None = None,
                           text_reference: dict[str, torch.Tensor] | None = None,
                           text_slots: int | None = None, check_prompt: Any = None
                           ) -> TransformersBackend:
    """The backend of a ``MusicgenForConditionalGeneration`` and its tokenizer.

    ``max_duration`` is 30 s, the clip length MusicGen was trained on; the defaults follow the
    model's ``generation_config`` (guidance 3, top-k 250, sampling). ``text_reference``: the text
    condition's weights under audiocraft's names, when the composite was made from an audiocraft
    model (the testbed), so its fingerprint is the audiocraft model's. ``text_slots``: read prompts
    as an audiocraft conditioner padded to that many unmasked slots does (see :class:`T5TextEncoder`).
    ``check_prompt(text)``: raises for a prompt the model's own conditioner would refuse.
    """
    dec_cfg, text_cfg = model.decoder.config, model.text_encoder.config
    proj = None
    if text_cfg.hidden_size != dec_cfg.hidden_size and dec_cfg.cross_attention_hidden_size is None:
        proj = model.enc_to_dec_proj
    gc = getattr(model, "generation_config", None)
    base = dict(top_k=min(int(getattr(gc, "top_k", None) or 250), int(dec_cfg.vocab_size)),
                cfg_coef=float(getattr(gc, "guidance_scale", None) or 3.0),
                temperature=float(getattr(gc, "temperature", None) or 1.0),
                duration=min(15.0, max_duration))
    base.update(defaults or {})
    return TransformersBackend(model.decoder, T5TextEncoder(model.text_encoder, tokenizer, proj,
                                                            reference=text_reference,
                                                            slots=text_slots,
                                                            check_prompt=check_prompt),
                               EncodecCodec(model.audio_encoder), max_duration=max_duration,
                               defaults=base, composite=model)


def backend_from_audiocraft(musicgen: Any) -> TransformersBackend:
    """An audiocraft ``MusicGen`` on the transformers decoder: its LM's weights mapped into a
    ``MusicgenForCausalLM``, its own conditioner as text encoder, its own codec (the bridge for
    layouts with no transformers text encoder, e.g. ``build_musicgen``'s LUT conditioner)."""
    reference = AudiocraftBackend(musicgen)
    decoder = decoder_from_audiocraft(musicgen.lm).to(reference.lm.emb[0].weight.device)
    return TransformersBackend(decoder, AudiocraftTextEncoder(musicgen),
                               AudiocraftCodec(musicgen.compression_model),
                               max_duration=reference.max_duration, defaults=reference.defaults)
