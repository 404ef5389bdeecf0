"""The audiocraft backend: Meta's reference MusicGen (``audiocraft.models.MusicGen``), run unchanged.

Steps are read from audiocraft's own streaming offset (``lm.transformer._streaming_state``), so
they are right at every generation step although each call sees S = 1. Under guidance audiocraft
runs ``[cond B | uncond B]`` in one batch whenever conditions are given.

>>> from mstools.model.backends.audiocraft_backend import AudiocraftBackend
>>> backend = AudiocraftBackend(musicgen)        # an audiocraft MusicGen
>>> backend.name, backend.num_codebooks
('audiocraft', 4)
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mstools.model.backends.base import Backend, Progress

__all__ = ["AudiocraftBackend", "token_lengths"]


def token_lengths(lm: nn.Module, prompt: str | None) -> tuple:
    """Token count of ``prompt`` under each text conditioner of an audiocraft ``LMModel``."""
    from audiocraft.modules.conditioners import TextConditioner  # lazy: audiocraft is heavy; only this path needs it
    provider = getattr(lm, "condition_provider", None)
    lengths: list[int | None] = []
    for name, cond in (getattr(provider, "conditioners", {}) or {}).items():
        if not (isinstance(cond, TextConditioner) and hasattr(cond, "tokenize")):
            continue
        if getattr(cond, "slots", None):  # pads every prompt to fixed slots: one length for all
            lengths.append(int(cond.slots))
            continue
        try:
            out = cond.tokenize([prompt])
        except Exception as err:
            raise ValueError(f"the model's {name!r} conditioner cannot read prompt {prompt!r}: "
                             f"{err}") from err
        if isinstance(out, dict) and "input_ids" in out:
            lengths.append(int(out["input_ids"].shape[-1]))
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            lengths.append(int(out[0].shape[-1]))
        else:
            lengths.append(None)
    return tuple(lengths)


class AudiocraftBackend(Backend):
    """audiocraft's ``MusicGen`` (``musicgen.lm`` is an ``LMModel``) behind the registry's names."""

    name = "audiocraft"

    def __init__(self, musicgen: Any):
        self.musicgen = musicgen
        self.lm = musicgen.lm
        self.compression_model = musicgen.compression_model
        layers = self.lm.transformer.layers
        self.clock_module = self.lm.transformer
        self.num_layers = len(layers)
        self.d_model = int(self.lm.dim)
        self.num_heads = int(layers[0].self_attn.num_heads)
        self.num_codebooks = int(self.lm.num_codebooks)
        self.card = int(self.lm.card)
        self.special_token_id = int(self.lm.special_token_id)
        self.frame_rate = float(self.compression_model.frame_rate)
        self.sample_rate = int(self.compression_model.sample_rate)
        self.channels = int(self.compression_model.channels)
        self.max_duration = float(musicgen.max_duration)

    # ------------------------------------------------------------------ info
    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        p = self.musicgen.generation_params
        return dict(use_sampling=p.get("use_sampling", True), top_k=p.get("top_k", 250),
                    top_p=p.get("top_p", 0.0), temperature=p.get("temp", 1.0),
                    cfg_coef=p.get("cfg_coef", 3.0), two_step_cfg=p.get("two_step_cfg", False),
                    duration=float(self.musicgen.duration))

    def read_steps(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int]:
        state = getattr(module, "_streaming_state", {})
        start = int(state["offsets"][0]) if "offsets" in state else 0
        return start, int(args[0].shape[1])

    def to_sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """audiocraft's own pattern provider: codes [B, K, T] -> steps [B, K, T + K - 1]."""
        t, k = codes.shape[-1], codes.shape[1]
        pattern = self.lm.pattern_provider.get_pattern(t)
        seq, _, _ = pattern.build_pattern_sequence(codes, self.special_token_id)
        return seq[..., : t + k - 1]

    def conditions(self, prompts: Sequence[str | None]) -> list:
        """audiocraft ``ConditioningAttributes`` for text prompts (None = unconditional)."""
        attrs, _ = self.musicgen._prepare_tokens_and_attributes(list(prompts), None)
        return attrs

    def prompt_token_lengths(self, prompt: str | None) -> tuple:
        return token_lengths(self.lm, prompt)

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.lm.state_dict())

    # ------------------------------------------------------------------ running
    def logits(self, seq: torch.Tensor, prompts: Sequence[str | None]) -> torch.Tensor:
        with torch.no_grad():
            return self.lm(seq, conditions=self.conditions(prompts))

    def generate(self, prompts: list[str | None], duration: float, params: dict[str, Any], *,
                 audio_prompt: tuple[torch.Tensor, int] | None, decode: bool,
                 progress: Progress | None) -> tuple[torch.Tensor, torch.Tensor]:
        mg = self.musicgen
        restore = self.defaults
        try:
            mg.set_generation_params(**{**params, "duration": float(duration)})
            if progress is not None:
                mg.set_custom_progress_callback(progress)
            show = progress is not None
            if audio_prompt is not None:
                wav, sr = audio_prompt
                audio, codes = mg.generate_continuation(wav, sr, prompts, progress=show,
                                                        return_tokens=True)
            elif decode:
                audio, codes = mg.generate(prompts, progress=show, return_tokens=True)
            else:
                attrs, _ = mg._prepare_tokens_and_attributes(prompts, None)
                codes = mg._generate_tokens(attrs, None, progress=show)
                audio = torch.zeros(len(prompts), self.channels, 0)
        finally:
            mg.set_generation_params(**restore)
            if progress is not None:
                mg.set_custom_progress_callback(None)
        return codes, audio

    def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes, _ = self.compression_model.encode(wav)
        return codes

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.compression_model.decode(codes, None)
