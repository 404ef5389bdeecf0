"""An independent reimplementation of the seed paper's released steering hook (no mstools import).

What the released ``VectorGuidedMusicgen`` does (transformers, ``facebook/musicgen-small``):

- ``load_steering_vectors``: ``weights_dict = {k + 1: probes[k]}``; layer ``i`` is steered with
  ``weights_dict[i - 1][target_class]`` = ``probes[i - 2][target_class]``, scaled to unit norm;
- probe ``k`` was fit on ``hidden_states[k + 1]`` of ``generate(output_hidden_states=True)``;
- ``generate_with_multilayer_guidance``: a forward hook on ``model.decoder.model.decoder.layers[i]``
  for each steered layer, all sharing ``self.count`` (set to ``offset`` first); each call does
  ``self.count += 1`` and, when ``self.count % self.freq == 0`` (``freq`` = 25), replaces the
  conditional half of the batch by ``(cond + ||cond|| * v * strength) / (1 + strength)`` per token;
  the unconditional half is left as is.

The released hook indexes ``output[0][0]`` / ``output[0][1]`` as the conditional / unconditional
rows, which is the layout of older transformers versions (a tuple whose first element is
``[2, S, D]`` for one prompt). transformers 5 layers return the tensor ``[2B, S, D]`` itself; this
reimplementation does the same edit on that layout (rows ``[:B]`` conditional), for any batch size.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch


def released_vectors(probes: np.ndarray, target_class: int, target_layers: Sequence[int]
                     ) -> dict[int, torch.Tensor]:
    """``load_steering_vectors``: ``probes`` ``[n_probes, n_classes, D]`` (probe k fit on
    ``hidden_states[k + 1]``) -> unit vector per steered layer."""
    weights_dict = {k + 1: probes[k] for k in range(probes.shape[0])}
    out = {}
    for layer_idx in target_layers:
        steer = weights_dict[layer_idx - 1]
        vec = steer[target_class]
        out[layer_idx] = torch.tensor(vec / np.linalg.norm(vec), dtype=torch.float32)
    return out


class SeedHooks:
    """The released hooks: one shared counter, every ``freq``-th call steers the conditional rows."""

    def __init__(self, vectors: Mapping[int, torch.Tensor], strengths: Mapping[int, float],
                 freq: int = 25, offset: int = 0):
        self.vectors = dict(vectors)
        self.strengths = dict(strengths)
        self.freq = freq
        self.count = offset
        self.steered: list[tuple[int, int]] = []   # (call number, layer) of each steered call

    def _hook(self, layer_idx: int):
        strength = self.strengths[layer_idx]

        def residual_hook(module, inputs, output):
            self.count += 1
            hidden = output[0] if isinstance(output, tuple) else output
            b = hidden.shape[0] // 2
            if self.count % self.freq != 0:
                return None
            self.steered.append((self.count, layer_idx))
            v = self.vectors[layer_idx].to(hidden.device, hidden.dtype)
            cond, uncond = hidden[:b], hidden[b:]
            norm = torch.norm(cond, dim=-1, keepdim=True)
            new = torch.cat([(cond + norm * v * strength) / (1 + strength), uncond])
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        return residual_hook

    @contextlib.contextmanager
    def attach(self, model) -> Iterator["SeedHooks"]:
        """Hooks on ``model.decoder.model.decoder.layers[i]`` of a ``MusicgenForConditionalGeneration``."""
        handles = [model.decoder.model.decoder.layers[i].register_forward_hook(self._hook(i))
                   for i in self.vectors]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def generate_codes(model, processor, prompts: Sequence[str], max_new_tokens: int, seed: int
                   ) -> torch.Tensor:
    """``processor -> generate`` as the released code calls it; returns the codes ``[B, K, T]`` the
    audio was decoded from (read where ``generate`` hands them to ``audio_encoder.decode``)."""
    seen = []
    decode = model.audio_encoder.decode

    def spy(audio_codes, *args, **kwargs):
        seen.append(audio_codes)
        return decode(audio_codes, *args, **kwargs)

    inputs = processor(text=list(prompts), padding=True, return_tensors="pt")
    model.audio_encoder.decode = spy
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=max_new_tokens)
    finally:
        del model.audio_encoder.decode
    return seen[-1][0]
