"""Looking at a model from outside: hook shapes of an architecture, the text conditioner, generation
speed, and the largest gap between two models (e.g. one model on two backends) at every hook.

>>> hook_shapes("tiny").set_index("name").loc["blocks.1.attn.hook_z", "shape"]
(1, 1, 4, 8)
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import pandas as pd
import torch

from mstools.core import timeline
from mstools.core.names import expand_names, kind_of, spec_for
from mstools.model.checkpoints import ARCHITECTURES

__all__ = ["hook_shapes", "time_generation", "text_conditioner", "backend_gap"]


def hook_shapes(scale: str, batch: int = 1, steps: int = 1) -> pd.DataFrame:
    """Shape of every hook of a MusicGen architecture (``mstools.model.loading.ARCHITECTURES``), not built.

    Building ``build_musicgen("small")`` takes seconds and ~1.7 GB; the shapes follow from the
    architecture alone: ``[B, S, D]``, ``[B, S, H, D/H]`` for ``attn.hook_z``, ``[B, K, S, card]`` for
    ``hook_logits``.

    Args:
        scale: ``"tiny"``, ``"small"``, ``"medium"`` or ``"large"``.
        batch, steps: B and S to fill in (S = 1 at every generation step; under CFG the batch is 2B).

    Returns:
        DataFrame with ``name, layer, shape`` (one row per hook name, layers expanded).

    >>> hook_shapes("small").set_index("name").loc["blocks.23.attn.hook_z", "shape"]
    (1, 1, 16, 64)
    """
    if scale not in ARCHITECTURES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(ARCHITECTURES)}")
    a = ARCHITECTURES[scale]
    d, h, card, k = a["dim"], a["num_heads"], a["card"], 4
    rows = []
    for name in expand_names(a["num_layers"]):
        _, layer = spec_for(name)
        if kind_of(name) == "attn.hook_z":
            shape = (batch, steps, h, d // h)
        elif name == "hook_logits":
            shape = (batch, k, steps, card)
        else:
            shape = (batch, steps, d)
        rows.append(dict(name=name, layer=-1 if layer is None else layer, shape=shape))
    return pd.DataFrame(rows)


def time_generation(model: Any, seconds: float = 1.0, batch: int = 1, *, repeats: int = 1,
                    prompt: str = "music") -> dict[str, float]:
    """Measure generation speed of ``model`` on this machine (codes only, no audio decoding).

    Runs ``repeats`` generations of ``batch`` clips x ``seconds`` and keeps the fastest.

    Returns:
        ``{"steps", "seconds_per_step", "compute_per_audio_second", "batch"}``: LM steps per clip,
        wall time per step, and wall seconds per second of audio (for the whole batch).

    >>> time_generation(model, seconds=1.0)["steps"]         # 10 frames at 10 frames/s + K - 1
    13.0
    """
    if not (seconds > 0 and batch >= 1 and repeats >= 1):
        raise ValueError(f"need seconds > 0, batch >= 1, repeats >= 1; got {seconds}, {batch}, {repeats}")
    best = math.inf
    steps = 0
    for r in range(repeats):
        t0 = time.perf_counter()
        out = model.generate([prompt] * batch, seconds, seed=r, decode=False)
        best = min(best, time.perf_counter() - t0)
        steps = timeline.num_steps(int(out.codes.shape[-1]), model.num_codebooks)
    return {"steps": float(steps), "seconds_per_step": best / max(steps, 1),
            "compute_per_audio_second": best / seconds, "batch": float(batch)}


def text_conditioner(model: Any) -> str:
    """Name what turns a prompt into the condition the LM cross-attends to, on either backend.

    audiocraft: the classes of ``model.lm.condition_provider.conditioners``; transformers: the text
    encoder feeding ``encoder_hidden_states`` (T5 for released checkpoints and for the testbed;
    an audiocraft conditioner for models built with
    :func:`mstools.model.backends.transformers_backend.backend_from_audiocraft`).

    Returns:
        One line, e.g. ``"description: T5TextConditioner (audiocraft)"``.

    >>> text_conditioner(mstools.load_musicgen("testbed", backend="transformers"))
    'T5EncoderModel + enc_to_dec_proj (transformers encoder_hidden_states)'
    """
    backend = model.backend
    if backend.name == "audiocraft":
        conds = model.lm.condition_provider.conditioners
        return ", ".join(f"{k}: {type(c).__name__}" for k, c in conds.items()) + " (audiocraft)"
    text = backend.text
    provider = getattr(text, "provider", None)
    if provider is not None:
        conds = ", ".join(f"{k}: {type(c).__name__}" for k, c in provider.conditioners.items())
        return f"{conds} (audiocraft conditioner -> transformers encoder_hidden_states)"
    encoder = getattr(text, "text_encoder", None)
    if encoder is not None:
        proj = " + enc_to_dec_proj" if getattr(text, "proj", None) is not None else ""
        return f"{type(encoder).__name__}{proj} (transformers encoder_hidden_states)"
    return type(text).__name__


def backend_gap(model_a: Any, model_b: Any, codes: torch.Tensor, prompts: Sequence[str | None],
                names_filter: Any = None) -> pd.DataFrame:
    """Teacher-force the same codes and prompts through two models and compare every hook.

    Made for one model on two backends (``load_musicgen(name, backend=...)``): the hook names are
    the same, so every activation and the logits can be compared directly.

    Args:
        model_a, model_b: two :class:`mstools.model.hooked.HookedMusicGen` with the same hook names.
        codes: LongTensor ``[B, K, T]``.
        prompts: one text per clip (None: unconditional).
        names_filter: hooks to compare (default: all).

    Returns:
        DataFrame indexed by hook name (``"logits"`` first) with ``shape``, ``max_abs_diff``
        (largest ``|a - b|``) and ``scale`` (largest ``|a|``).

    >>> a, b = (mstools.load_musicgen("testbed", backend=x) for x in ("audiocraft", "transformers"))
    >>> codes, prompts = a.reference_clips(2, 2.0)
    >>> bool(backend_gap(a, b, codes, prompts).loc["logits", "max_abs_diff"] < 1e-4)
    True
    """
    if model_a.hook_names != model_b.hook_names:
        raise ValueError("the two models have different hook names; compare one model on two "
                         "backends (or two models of one architecture)")
    la, ca = model_a.run_with_cache(codes, prompts, names_filter=names_filter)
    lb, cb = model_b.run_with_cache(codes, prompts, names_filter=names_filter)
    pairs = [("logits", la, lb)] + [(n, ca[n], cb[n]) for n in ca]
    rows = []
    for name, x, y in pairs:
        if x.shape != y.shape:
            raise ValueError(f"{name}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        rows.append(dict(hook=name, shape=tuple(x.shape),
                         max_abs_diff=float((x.double() - y.double()).abs().max()),
                         scale=float(x.double().abs().max())))
    return pd.DataFrame(rows).set_index("hook")
