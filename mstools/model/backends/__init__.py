"""Backends: one MusicGen implementation each, behind :class:`mstools.model.hooked.HookedMusicGen`.

- ``"audiocraft"`` — Meta's reference implementation (:class:`AudiocraftBackend`).
- ``"transformers"`` — Hugging Face's ``MusicgenForConditionalGeneration``
  (:class:`TransformersBackend`); :mod:`mstools.model.backends.convert` maps weights between the two.

Choose with ``load_musicgen(name, backend=...)`` / ``build_musicgen(scale, backend=...)``.
"""
from mstools.model.backends.audiocraft_backend import AudiocraftBackend
from mstools.model.backends.base import BACKENDS, Backend
from mstools.model.backends.transformers_backend import TransformersBackend

__all__ = ["BACKENDS", "AudiocraftBackend", "Backend", "TransformersBackend"]
