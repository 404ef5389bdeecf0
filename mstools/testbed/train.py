"""Train the testbed MusicGen on fresh procedural clips (teacher forcing, resumable).

    python -m mstools.testbed.train [--out DIR] [--minutes M] [--steps N] [--smoke]

Each step draws a new batch from the grammar (seeded by ``(seed, step)``, so a resumed run sees the
same data as an uninterrupted one) and minimises the cross-entropy of ``lm.compute_predictions``
averaged over codebooks on the delay pattern's valid positions. The LM and its T5 text encoder are
trained together from random weights. What a batch holds (:data:`RECIPE`, all recorded in the
manifest):

- **captions** from :func:`mstools.testbed.captions.noisy_caption`: factors left out, synonyms and
  filler words, a wrong value for a mentioned factor with probability ``wrong_prob`` (per factor:
  about 4 % per wrong value for genre and instrument, 6 % for the two-valued tempo and dynamics)
  and, for genre, the genre that sounds most alike (same scale and drum kit) with probability
  ``similar_prob``, so a prompt is evidence the audio context can outweigh; a share
  ``cfg_dropout`` of clips has no text (the null condition, for classifier-free guidance);
- **switching clips** (:func:`mstools.testbed.music.sample_switch_clip`): with probability
  ``switch_prob`` (``switch_prob_null`` for clips without text) one factor changes at a phrase
  boundary, and the caption describes the start: the music can move away from its description and
  the model must follow the audio. Clips without text switch more often, so guidance (which
  contrasts the two) keeps prompted generations from wandering;
- **noisy context**: a share ``corrupt_prob`` of the teacher-forced input tokens is replaced by
  random tokens; the targets stay clean;
- **padding**: rows are sorted by token count and cut into micro-batches of ``micro_batch``; each
  is padded to ``slots`` positions (as audiocraft reads prompts), to its longest prompt (no padding,
  as transformers reads them with a mask) or in between, in equal shares. audiocraft's
  cross-attention attends to padding, so this makes the model insensitive to how much there is.

AdamW with linear warm-up, then cosine decay (to lr/10) over whichever budget runs out first:
``--steps`` or ``--minutes`` of wall time (counted across resumes). On a busy machine the time
budget binds: the run then takes fewer steps but still ends with a decayed learning rate.

Checkpoints (``--checkpoint-dir``, default ``runs/testbed`` in the repository) hold
``model.safetensors``, ``optim.pt`` (tensors and numbers only, read with ``weights_only=True``) and
``state.json``; each is written atomically, ``state.json`` last. A run with the same config, seed
and recipe resumes from them. At the end ``--out`` receives ``testbed.safetensors``,
``text_encoder/`` and ``manifest.json``. ``--smoke`` runs 3 tiny steps end to end in seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import time
import typing as tp

import numpy as np
import torch
from audiocraft.modules.conditioners import ConditioningAttributes
from safetensors.torch import load_file
from tqdm import tqdm

from mstools.core.fileio import atomic_write, atomic_write_bytes, save_safetensors
from mstools.testbed.captions import noisy_caption
from mstools.testbed.model import WEIGHTS_DIR, build_testbed_musicgen, save_testbed_weights
from mstools.testbed.music import CARD, DATA_VERSION, FRAME_RATE, make_dataset, sample_clip, sample_switch_clip, stack_codes

__all__ = ["RECIPE", "train", "teacher_forced_loss", "training_batch", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT_DIR = REPO_ROOT / "runs" / "testbed"

#: What a training batch holds (see the module docstring).
RECIPE: dict[str, tp.Any] = {
    "cfg_dropout": 0.12,
    "mention_prob": 0.7,
    "wrong_prob": {"genre": 0.12, "instrument": 0.12, "tempo": 0.06, "dynamics": 0.06},
    "similar_prob": 0.08,
    "synonym_prob": 0.25,
    "switch_prob": 0.04,
    "switch_prob_null": 0.2,
    "switch_factors": {"genre": 0.5, "dynamics": 0.2, "tempo": 0.15, "instrument": 0.15},
    "corrupt_prob": 0.02,
    "micro_batch": 8,
}


def _conditions(prompts: tp.Sequence[str | None]) -> list[ConditioningAttributes]:
    return [ConditioningAttributes(text={"description": p}) for p in prompts]


def _masked_ce(logits: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per codebook ``[K]`` over the valid positions."""
    return torch.stack([torch.nn.functional.cross_entropy(logits[:, k][mask[:, k]], targets[:, k][mask[:, k]])
                        for k in range(targets.shape[1])])


def teacher_forced_loss(lm: torch.nn.Module, codes: torch.Tensor,
                        prompts: tp.Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and per-codebook cross-entropy ``[K]`` of codes ``[B, K, T]`` (prompts read
    as at inference: padded to the conditioner's slots)."""
    out = lm.compute_predictions(codes, _conditions(prompts))
    per_k = _masked_ce(out.logits, out.mask, codes)
    return per_k.mean(), per_k.detach()


def training_batch(seed: int, step: int, batch: int, frames: int, recipe: dict = RECIPE
                   ) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """``(clean codes [B, K, T], input codes with corrupted tokens, captions)`` of one step."""
    rng = np.random.default_rng([seed, step])
    factors = list(recipe["switch_factors"])
    weights = np.asarray([recipe["switch_factors"][f] for f in factors], dtype=float)
    clips, prompts = [], []
    for _ in range(batch):
        null = rng.random() < recipe["cfg_dropout"]
        if rng.random() < (recipe["switch_prob_null"] if null else recipe["switch_prob"]):
            factor = factors[int(rng.choice(len(factors), p=weights / weights.sum()))]
            clip = sample_switch_clip(rng, frames, factor)
        else:
            clip = sample_clip(rng, frames)
        clips.append(clip)
        prompts.append(None if null else noisy_caption(
            clip.labels, rng, mention_prob=recipe["mention_prob"], wrong_prob=recipe["wrong_prob"],
            similar_prob=recipe["similar_prob"], synonym_prob=recipe["synonym_prob"])[0])
    codes = stack_codes(clips)
    corrupt = torch.from_numpy(rng.random(codes.shape) < recipe["corrupt_prob"])
    noise = torch.from_numpy(rng.integers(CARD, size=codes.shape))
    return codes, torch.where(corrupt, noise, codes), prompts


def _padded_step_loss(lm: torch.nn.Module, codes: torch.Tensor, inputs: torch.Tensor,
                      prompts: list[str | None], rng: np.random.Generator, micro: int
                      ) -> tuple[float, torch.Tensor]:
    """Backward through every micro-batch (random padding, see module docstring); returns the mean loss
    and per-codebook losses."""
    cond = lm.condition_provider.conditioners["description"]
    tokens = cond.tokenize(prompts)
    lengths = tokens["attention_mask"].sum(-1)
    order = torch.argsort(lengths, stable=True)
    total, per_k_total = 0.0, torch.zeros(codes.shape[1])
    for start in range(0, len(prompts), micro):
        rows = order[start:start + micro]
        longest = max(1, int(lengths[rows].max()))
        mode = rng.integers(3)
        width = cond.slots if mode == 0 else longest if mode == 1 else int(rng.integers(longest, cond.slots + 1))
        sub = {k: v[rows, :width] for k, v in tokens.items()}
        out = lm.compute_predictions(inputs[rows], [], condition_tensors={"description": cond(sub)})
        per_k = _masked_ce(out.logits, out.mask, codes[rows])
        share = len(rows) / len(prompts)
        (per_k.mean() * share).backward()
        total += float(per_k.detach().mean()) * share
        per_k_total += per_k.detach() * share
    return total, per_k_total


def _lr_at(step: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to ``base / 10`` as progress -> 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(ckpt: Path, lm: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    # clone: T5's input embedding is shared with ``shared``; safetensors stores each tensor once
    save_safetensors({k: v.clone() for k, v in lm.state_dict().items()}, ckpt / "model.safetensors")
    atomic_write(ckpt / "optim.pt", lambda tmp: torch.save(opt.state_dict(), tmp))
    atomic_write_bytes(ckpt / "state.json", (json.dumps(state, indent=2) + "\n").encode())


def _load_checkpoint(ckpt: Path, lm: torch.nn.Module, opt: torch.optim.Optimizer, identity: dict) -> dict | None:
    state_path = ckpt / "state.json"
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    if state.get("identity") != identity:
        raise ValueError(f"checkpoint in {ckpt} is from a different run (config, seed, recipe or schedule "
                         "differ); use another --checkpoint-dir or delete it to start afresh")
    lm.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    opt.load_state_dict(torch.load(ckpt / "optim.pt", weights_only=True))
    return state


@torch.no_grad()
def _validation(lm: torch.nn.Module, frames: int, n: int = 64, seed: int = 10_000) -> dict:
    """Teacher-forced loss on fresh clips with full canonical prompts: padded to the slots (as
    audiocraft reads them), unpadded (as transformers reads them, masked) and with the null text."""
    lm.eval()
    clips = make_dataset(n, frames, seed, mention_prob=1.0)
    codes, prompts = stack_codes(clips), [c.prompt for c in clips]
    loss, per_k = teacher_forced_loss(lm, codes, prompts)
    _, per_k_null = teacher_forced_loss(lm, codes, [None] * n)
    cond = lm.condition_provider.conditioners["description"]
    unpadded = []
    for clip in clips:
        tokens = cond.tokenize([clip.prompt])
        width = int(tokens["attention_mask"].sum())
        out = lm.compute_predictions(clip.codes[None], [], condition_tensors={
            "description": cond({k: v[:, :width] for k, v in tokens.items()})})
        unpadded.append(_masked_ce(out.logits, out.mask, clip.codes[None]).mean())
    lm.train()
    return {"val_loss": float(loss), "val_loss_per_codebook": [round(float(v), 4) for v in per_k],
            "val_loss_unpadded": float(torch.stack(unpadded).mean()),
            "val_loss_null_prompt": float(per_k_null.mean())}


def train(out: str | os.PathLike = WEIGHTS_DIR, *, minutes: float = 40.0, steps: int = 8000, batch: int = 32,
          lr: float = 1.5e-3, warmup: int = 150, recipe: dict | None = None, seed: int = 0,
          config: dict | None = None, checkpoint_dir: str | os.PathLike = DEFAULT_CHECKPOINT_DIR,
          checkpoint_every_s: float = 60.0, threads: int = 1, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train (or resume) and write ``testbed.safetensors``, ``text_encoder/`` and ``manifest.json``
    into ``out``.

    ``recipe`` overrides keys of :data:`RECIPE`. ``stop_after`` ends this invocation after that many
    steps (a later call resumes from the checkpoint). Returns the manifest path. See the module
    docstring for the procedure.
    """
    torch.set_num_threads(threads)
    unknown = set(recipe or {}) - set(RECIPE)
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(RECIPE)}")
    rec = {**RECIPE, **(recipe or {})}
    model = build_testbed_musicgen(config, seed=seed)
    lm = model.lm
    cfg = lm.testbed_config
    frames = int(round(cfg["train_seconds"] * FRAME_RATE))
    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    identity = {"config": cfg, "seed": seed, "steps": steps, "batch": batch, "lr": lr, "warmup": warmup,
                "recipe": rec, "data_version": DATA_VERSION}
    ckpt = Path(checkpoint_dir)
    state = _load_checkpoint(ckpt, lm, opt, identity) or {
        "identity": identity, "step": 0, "elapsed_s": 0.0, "loss_ema": None, "history": []}
    start_step, elapsed0 = state["step"], state["elapsed_s"]
    t0 = time.monotonic()
    last_ckpt = t0
    bar = tqdm(total=steps, initial=start_step, desc="testbed", disable=not progress, dynamic_ncols=True)
    step = start_step
    last_step = steps if stop_after is None else min(steps, start_step + stop_after)
    while step < last_step and elapsed0 + (time.monotonic() - t0) < minutes * 60:
        # progress: share of the step budget or of the time budget, whichever is further along
        progress = max(step / steps, (elapsed0 + time.monotonic() - t0) / (minutes * 60))
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, progress, lr, warmup)
        codes, inputs, prompts = training_batch(seed, step, batch, frames, rec)
        opt.zero_grad(set_to_none=True)
        value, _ = _padded_step_loss(lm, codes, inputs, prompts, np.random.default_rng([seed, step, 1]),
                                     rec["micro_batch"])
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        step += 1
        state["loss_ema"] = value if state["loss_ema"] is None else 0.95 * state["loss_ema"] + 0.05 * value
        if step % 50 == 0:
            state["history"].append([step, round(state["loss_ema"], 4)])
        bar.update(1)
        bar.set_postfix(loss=f"{state['loss_ema']:.3f}")
        now = time.monotonic()
        if now - last_ckpt >= checkpoint_every_s:
            state.update(step=step, elapsed_s=elapsed0 + now - t0)
            _save_checkpoint(ckpt, lm, opt, state)
            last_ckpt = now
    bar.close()
    state.update(step=step, elapsed_s=elapsed0 + time.monotonic() - t0)
    _save_checkpoint(ckpt, lm, opt, state)
    metrics = {"final_train_loss_ema": state["loss_ema"], **_validation(lm, frames)}
    lm.eval()
    extra = {
        "training": {"steps_done": step, "steps_planned": steps, "batch": batch, "lr": lr, "warmup": warmup,
                     "recipe": rec, "frames_per_clip": frames, "threads": threads,
                     "training_seconds": round(state["elapsed_s"], 1), "loss_history": state["history"]},
        "metrics": metrics,
    }
    return save_testbed_weights(model, out, seed=seed, extra=extra)


def main(argv: tp.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mstools.testbed.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(WEIGHTS_DIR),
                        help="where testbed.safetensors, text_encoder/ and manifest.json go")
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-time cap, counted across resumes")
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps (length of the LR schedule)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default=None, help='JSON overrides of RECIPE, e.g. \'{"wrong_prob": 0.2}\'')
    parser.add_argument("--checkpoint-dir", default=None,
                        help="resumable checkpoints (default: runs/testbed, or OUT/checkpoints with --smoke)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is much faster than 2 when other jobs share the 2 cores")
    parser.add_argument("--smoke", action="store_true", help="3 tiny steps end to end, in seconds")
    args = parser.parse_args(argv)
    kwargs: dict[str, tp.Any] = dict(minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr,
                                     seed=args.seed, threads=args.threads,
                                     recipe=json.loads(args.recipe) if args.recipe else None)
    ckpt = args.checkpoint_dir
    if args.smoke:
        kwargs.update(steps=3, batch=4, warmup=1, config={"train_seconds": 2.0}, progress=False)
        ckpt = ckpt or str(Path(args.out) / "checkpoints")
    manifest = train(args.out, checkpoint_dir=ckpt or DEFAULT_CHECKPOINT_DIR, **kwargs)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
