"""Measure the trained testbed: prompt adherence per factor under CFG, and grammar log-likelihood.

    python experiments/evaluate_testbed.py [--weights DIR] [--seed S] [--seconds 6] [--repeats 3] [--no-write]

- Full prompts: the 64 combinations of the four factors ("loud fast rock with brass", ...), one clip
  each per batch, generated with ``MusicGen.generate`` (CFG on, testbed defaults); ``--repeats``
  batches from seeds ``S, S + 10, ...`` (3 by default: 192 clips); scored by the grammar
  (:func:`mstools.testbed.score.score`); adherence = share of clips whose grammar label equals the
  prompted label, per factor; also per 1 s segment (a single timing slip mid-clip makes a whole
  clip "none" but only one segment).
- Genre-only prompts ("rock", ...; 16 clips each genre per batch): genre adherence without other words.
- Unconditional clips: how grammatical the model is without a prompt.
- The same for the untrained model (random weights, same shapes) as the baseline, and the
  log-likelihood of fresh procedural clips as the reference for quality.
- Padding: the same prompts read two ways. audiocraft pads every prompt to the conditioner's fixed
  slots and its cross-attention attends to the padding; transformers' processor pads to the
  batch's longest prompt and its decoder masks the padding (:func:`tokenizer_path_model`: the
  testbed's weights on transformers' decoder, prompts through the saved tokenizer with
  ``padding=True``). Reported: adherence of both (same seeds), and on teacher-forced procedural
  clips the mean KL divergence between their next-token distributions, beside the KL between
  the prompt and the null text (how much the prompt matters at all).

Results go to the manifest's ``evaluation`` field (the weights file, and so its sha256, is
unchanged) and two example wavs are written to ``examples/`` (decoded with ``SynthCodec``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import time
import typing as tp

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from mstools.core.fileio import atomic_write, atomic_write_bytes
from mstools.testbed.model import MANIFEST_FILE, WEIGHTS_DIR, build_testbed_musicgen, load_testbed_musicgen, read_manifest
from mstools.testbed.music import FACTORS, FRAME_RATE, GENRES, make_dataset, stack_codes
from mstools.model.backends.transformers_backend import T5TextEncoder, backend_from_audiocraft
from mstools.model.hooked import HookedMusicGen
from mstools.testbed.music import full_prompts
from mstools.testbed.score import adherence, score

__all__ = ["evaluate", "evaluate_model", "tokenizer_path_model", "padding_comparison",
           "write_examples", "main"]

EXAMPLES_DIR = WEIGHTS_DIR.parent / "examples"
EXAMPLE_PROMPTS = {"fast_rock_with_brass": "fast rock with brass", "soft_classical_piano": "soft classical piano"}


def _generate(model, prompts: list[str | None], seed: int, seconds: float) -> torch.Tensor:
    model.set_generation_params(duration=seconds)
    torch.manual_seed(seed)
    if all(p is None for p in prompts):
        _, codes = model.generate_unconditional(len(prompts), return_tokens=True)
    else:
        _, codes = model.generate(prompts, return_tokens=True)
    return codes


def _summary(df: pd.DataFrame) -> dict[str, float]:
    return {"loglik_mean": round(float(df.loglik.mean()), 4), "error_rate_mean": round(float(df.error_rate.mean()), 4),
            "none_rate": round(float((df[list(FACTORS)] == "none").any(axis=1).mean()), 4)}


def evaluate_model(model, seed: int = 0, seconds: float = 6.0, repeats: int = 1) -> dict:
    """Adherence and quality of one model (see module docstring); ``repeats`` batches of every prompt
    set, from seeds ``seed + 10 * r``."""
    prompts, labels = full_prompts()
    genre_prompts = [g for g in GENRES for _ in range(16)]
    t0 = time.monotonic()
    full, segments, genre_only, uncond = [], [], [], []
    for r in range(repeats):
        s = seed + 10 * r
        codes = _generate(model, prompts, s, seconds)
        full.append(score(codes))
        segments.append(score(codes, segment_seconds=1.0))
        genre_only.append(score(_generate(model, genre_prompts, s + 1, seconds)))
        uncond.append(score(_generate(model, [None] * 16, s + 2, seconds)))
    full, genre_only, uncond = (pd.concat(x, ignore_index=True) for x in (full, genre_only, uncond))
    segment_labels = [labels[c] for seg in segments for c in seg["clip"]]
    segments = pd.concat(segments, ignore_index=True)
    return {
        "full_prompt_adherence": {k: round(v, 4) for k, v in adherence(full, labels * repeats).items()},
        "full_prompt_quality": _summary(full),
        "full_prompt_adherence_1s_segments": {k: round(v, 4) for k, v in adherence(segments, segment_labels).items()},
        "genre_only_adherence": round(float(np.mean(genre_only.genre.to_numpy() == np.asarray(genre_prompts * repeats))), 4),
        "genre_only_quality": _summary(genre_only),
        "unconditional_quality": _summary(uncond),
        "seconds": seconds, "repeats": repeats, "clips": repeats * (len(prompts) + len(genre_prompts) + 16),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def tokenizer_path_model(musicgen: tp.Any) -> tp.Any:
    """The testbed on transformers' decoder, reading prompts as a transformers processor does.

    The conditioner's own tokenizer, T5 encoder and ``output_proj`` (as ``enc_to_dec_proj``) feed
    ``encoder_hidden_states`` with ``padding=True`` and the attention mask, which the decoder
    applies in cross-attention (:class:`mstools.model.backends.transformers_backend.T5TextEncoder`).
    Returns a :class:`mstools.model.hooked.HookedMusicGen`.
    """
    backend = backend_from_audiocraft(musicgen)
    cond = musicgen.lm.condition_provider.conditioners["description"]
    backend.text = T5TextEncoder(cond.t5, cond.tokenizer, cond.output_proj)
    return HookedMusicGen(backend, name="testbed-masked-text")


def _mean_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean KL(p || q) over valid positions of logits ``[B, K, S, card]``."""
    lp, lq = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return float(kl[valid].mean())


@torch.no_grad()
def padding_comparison(musicgen: tp.Any, seed: int = 0, seconds: float = 6.0, repeats: int = 1) -> dict:
    """Adherence and next-token KL of the two ways to read a prompt (see the module docstring)."""
    fixed = HookedMusicGen(musicgen, name="testbed")
    masked = tokenizer_path_model(musicgen)
    prompts, labels = full_prompts()
    genre_prompts = [g for g in GENRES for _ in range(16)]
    out: dict[str, tp.Any] = {}
    for name, model in (("audiocraft_fixed_slots", fixed), ("transformers_masked", masked)):
        full, genre = [], []
        for r in range(repeats):
            full.append(score(model.generate(prompts, seconds, seed=seed + 10 * r, decode=False).codes))
            genre.append(score(model.generate(genre_prompts, seconds, seed=seed + 10 * r + 1, decode=False).codes))
        full, genre = pd.concat(full, ignore_index=True), pd.concat(genre, ignore_index=True)
        out[name] = {"full_prompt_adherence": {k: round(v, 4) for k, v in adherence(full, labels * repeats).items()},
                     "genre_only_adherence": round(float(np.mean(genre.genre.to_numpy()
                                                                 == np.asarray(genre_prompts * repeats))), 4),
                     "full_prompt_loglik": round(float(full.loglik.mean()), 4)}
    clips = make_dataset(64, int(round(seconds * FRAME_RATE)), seed=seed + 555, mention_prob=1.0)
    codes = stack_codes(clips)
    texts = [c.prompt for c in clips[:32]] + [c.labels["genre"] for c in clips[32:]]
    a, b = fixed(codes, texts), masked(codes, texts)
    null = fixed(codes, [None] * len(texts))
    valid = fixed.to_sequence(codes) != fixed.special_token_id            # [B, K, S]
    valid = torch.cat([valid[..., 1:], torch.zeros_like(valid[..., :1])], -1)  # step s predicts s + 1
    out["teacher_forced"] = {
        "kl_fixed_vs_masked": round(_mean_kl(a, b, valid), 5),
        "kl_prompt_vs_null": round(_mean_kl(a, null, valid), 5),
        "max_abs_logprob_diff": round(float((torch.log_softmax(a.double(), -1) - torch.log_softmax(b.double(), -1))
                                            .abs().amax(-1)[valid].max()), 4),
        "clips": len(texts),
    }
    return out


def evaluate(weights: str | os.PathLike | None = None, seed: int = 0, seconds: float = 6.0,
             repeats: int = 3) -> dict:
    """Evaluate the trained model (``repeats`` seeds) beside the untrained baseline (one seed),
    procedural clips and the two ways of padding prompts."""
    trained = load_testbed_musicgen(weights)
    untrained = build_testbed_musicgen(trained.lm.testbed_config, seed=seed + 12345)
    frames = int(round(seconds * FRAME_RATE))
    procedural = score(stack_codes(make_dataset(64, frames, seed=seed + 777)))
    return {
        "trained": evaluate_model(trained, seed, seconds, repeats),
        "untrained": evaluate_model(untrained, seed, seconds, 1),
        "procedural": _summary(procedural),
        "padding": padding_comparison(trained, seed, seconds, repeats),
        "seed": seed,
    }


def write_examples(model, out_dir: str | os.PathLike = EXAMPLES_DIR, seconds: float = 4.0, seed: int = 0) -> list[Path]:
    """Generate and write ``fast_rock_with_brass.wav`` and ``soft_classical_piano.wav`` (16-bit PCM)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codes = _generate(model, list(EXAMPLE_PROMPTS.values()), seed, seconds)
    wav = model.compression_model.decode(codes)
    paths = []
    for name, audio in zip(EXAMPLE_PROMPTS, wav):
        path = out_dir / f"{name}.wav"
        atomic_write(path, lambda tmp, a=audio: sf.write(tmp, a[0].clamp(-1, 1).numpy(),
                                                          model.sample_rate, subtype="PCM_16",
                                                          format="WAV"))
        paths.append(path)
    return paths


def main(argv: tp.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python experiments/evaluate_testbed.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None, help="weights directory (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3, help="seeds per prompt set for the trained model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave manifest and examples")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = evaluate(args.weights, args.seed, args.seconds, args.repeats)
    print(json.dumps(results, indent=2))
    if args.no_write:
        return
    manifest, weights = read_manifest(args.weights)
    manifest["evaluation"] = results
    atomic_write_bytes(weights.parent / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    if args.weights is None or Path(args.weights).resolve() == WEIGHTS_DIR:
        for path in write_examples(load_testbed_musicgen(args.weights), seed=args.seed):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
