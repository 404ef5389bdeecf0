"""Backends: one MusicGen implementation each, behind :class:`mstools.hooked.HookedMusicGen`.

- ``"audiocraft"`` — Meta's reference implementation (:class:`AudiocraftBackend`).
- ``"transformers"`` — Hugging Face's ``MusicgenForConditionalGeneration``
  (:class:`TransformersBackend`); :mod:`mstools.backends.convert` maps weights between the two.

Choose with ``load_musicgen(name, backend=...)`` / ``build_musicgen(scale, backend=...)``.
"""
from .audiocraft_backend import AudiocraftBackend
from .base import BACKENDS, Backend
from .transformers_backend import TransformersBackend

__all__ = ["BACKENDS", "AudiocraftBackend", "Backend", "TransformersBackend"]
