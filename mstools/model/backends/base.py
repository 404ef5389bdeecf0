"""What a backend gives :class:`mstools.model.hooked.HookedMusicGen`: one MusicGen implementation, seen
through the same hook names, shapes, step indices and CFG layout.

Two backends exist: :class:`~mstools.model.backends.audiocraft_backend.AudiocraftBackend` (Meta's reference
implementation) and :class:`~mstools.model.backends.transformers_backend.TransformersBackend` (Hugging Face
``MusicgenForConditionalGeneration``). Everything above this layer (caching, probes, steering,
notebooks) talks to :class:`HookedMusicGen` only.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mstools.core.names import BACKENDS

__all__ = ["BACKENDS", "GENERATION_KEYS", "Backend", "Progress", "delay_sequence"]

#: ``progress(done_steps, total_steps)``
Progress = Callable[[int, int], None]

#: Generation parameters every backend understands (audiocraft's names).
GENERATION_KEYS = ("use_sampling", "top_k", "top_p", "temperature", "cfg_coef", "two_step_cfg")


def delay_sequence(codes: torch.Tensor, special: int) -> torch.Tensor:
    """Codes [B, K, T] -> LM input steps [B, K, T + K - 1] under MusicGen's delay pattern.

    Step ``s`` holds codebook ``k`` of frame ``s - 1 - k``; every other cell is ``special``.

    >>> delay_sequence(torch.tensor([[[1, 2], [3, 4]]]), special=9)
    tensor([[[9, 1, 2],
             [9, 9, 3]]])
    """
    b, k, t = codes.shape
    seq = torch.full((b, k, t + k - 1), special, dtype=torch.long, device=codes.device)
    for q in range(k):
        n = min(t, t + k - 1 - (q + 1))
        seq[:, q, q + 1: q + 1 + n] = codes[:, q, :n]
    return seq


class Backend(abc.ABC):
    """One MusicGen implementation behind :class:`mstools.model.hooked.HookedMusicGen`.

    Attributes:
        name: ``"audiocraft"`` or ``"transformers"`` (the registry's site table).
        lm: the module tree the registry's module paths refer to.
        clock_module: module whose forward pre-hook reads the absolute step (see :meth:`read_steps`).
        num_layers, d_model, num_heads, num_codebooks, card, special_token_id: the LM's shape.
        frame_rate, sample_rate, channels, max_duration: audio side.
        defaults: generation parameters (``GENERATION_KEYS`` + ``duration``).
    """

    name: str
    lm: nn.Module
    clock_module: nn.Module
    num_layers: int
    d_model: int
    num_heads: int
    num_codebooks: int
    card: int
    special_token_id: int
    frame_rate: float
    sample_rate: int
    channels: int
    max_duration: float
    defaults: dict[str, Any]

    @abc.abstractmethod
    def read_steps(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int]:
        """``(first absolute step, number of steps)`` of the forward call about to run."""

    def to_sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] -> LM input steps [B, K, T + K - 1] (delay pattern)."""
        return delay_sequence(codes, self.special_token_id)

    @abc.abstractmethod
    def logits(self, seq: torch.Tensor, prompts: Sequence[str | None]) -> torch.Tensor:
        """Teacher-forced logits [B, K, S, card] of LM input steps [B, K, S] with one prompt each."""

    @abc.abstractmethod
    def generate(self, prompts: list[str | None], duration: float, params: dict[str, Any], *,
                 audio_prompt: tuple[torch.Tensor, int] | None, decode: bool,
                 progress: Progress | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample codes [B, K, T] (and audio [B, C, N], empty when not ``decode``) with the
        backend's own sampler; the batch is ``[cond B | uncond B]`` under guidance."""

    @abc.abstractmethod
    def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio [B, C, N] at ``sample_rate`` -> codes [B, K, T]."""

    @abc.abstractmethod
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] -> audio [B, C, N]."""

    @abc.abstractmethod
    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """The LM's weights under audiocraft's names (the same model gives the same dict in every
        backend; used for fingerprints)."""

    def prompt_token_lengths(self, prompt: str | None) -> tuple:
        """Token count of a prompt under each text encoder (prompts of equal length batch
        without padding)."""
        return ()

    def module_label(self, path: str) -> str:
        """How a module path reads in tables (``lm.transformer.layers.0`` ...)."""
        return f"lm.{path}" if path else "lm"
