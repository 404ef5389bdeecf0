"""Train the testbed MusicGen on fresh procedural clips (teacher forcing, resumable).

    python -m mstools.testbed.train [--out DIR] [--minutes M] [--steps N] [--smoke]

Each step draws a new batch from the grammar (seeded by ``(seed, step)``, so a resumed run sees the
same data as an uninterrupted one), drops each prompt to the null condition with probability
``--cfg-dropout`` (per sample, so classifier-free guidance works), and minimises the cross-entropy of
``lm.compute_predictions`` averaged over codebooks on the delay pattern's valid positions.
AdamW with linear warm-up, then cosine decay (to lr/10) over whichever budget runs out first:
``--steps`` or ``--minutes`` of wall time (counted across resumes). On a busy machine the time
budget binds: the run then takes fewer steps but still ends with a decayed learning rate.

Checkpoints (``--checkpoint-dir``, default ``runs/testbed`` in the repository) hold
``model.safetensors``, ``optim.pt`` (tensors and numbers only, read with ``weights_only=True``) and
``state.json``; each is written atomically, ``state.json`` last. A run with the same config and seed
resumes from them. At the end ``--out`` receives ``testbed.safetensors`` and ``manifest.json``.
``--smoke`` runs 3 tiny steps end to end in seconds.
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
from mstools.testbed.model import WEIGHTS_DIR, build_testbed_musicgen, save_testbed_weights
from mstools.testbed.music import DATA_VERSION, FRAME_RATE, make_dataset, sample_clip, stack_codes

__all__ = ["train", "teacher_forced_loss", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT_DIR = REPO_ROOT / "runs" / "testbed"


def _conditions(prompts: tp.Sequence[str | None]) -> list[ConditioningAttributes]:
    return [ConditioningAttributes(text={"description": p}) for p in prompts]


def teacher_forced_loss(lm: torch.nn.Module, codes: torch.Tensor,
                        prompts: tp.Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and per-codebook cross-entropy ``[K]`` of codes ``[B, K, T]``."""
    out = lm.compute_predictions(codes, _conditions(prompts))
    logits, mask = out.logits, out.mask                                   # [B, K, T, card], [B, K, T]
    per_k = []
    for k in range(codes.shape[1]):
        m = mask[:, k]
        per_k.append(torch.nn.functional.cross_entropy(logits[:, k][m], codes[:, k][m]))
    per_k_t = torch.stack(per_k)
    return per_k_t.mean(), per_k_t.detach()


def _batch(seed: int, step: int, batch: int, frames: int, cfg_dropout: float) -> tuple[torch.Tensor, list]:
    rng = np.random.default_rng([seed, step])
    clips = [sample_clip(rng, frames) for _ in range(batch)]
    prompts = [None if rng.random() < cfg_dropout else c.prompt for c in clips]
    return stack_codes(clips), prompts


def _lr_at(step: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to ``base / 10`` as progress -> 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(ckpt: Path, lm: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    save_safetensors(lm.state_dict(), ckpt / "model.safetensors")
    atomic_write(ckpt / "optim.pt", lambda tmp: torch.save(opt.state_dict(), tmp))
    atomic_write_bytes(ckpt / "state.json", (json.dumps(state, indent=2) + "\n").encode())


def _load_checkpoint(ckpt: Path, lm: torch.nn.Module, opt: torch.optim.Optimizer, identity: dict) -> dict | None:
    state_path = ckpt / "state.json"
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    if state.get("identity") != identity:
        raise ValueError(f"checkpoint in {ckpt} is from a different run (config, seed or schedule differ); "
                         "use another --checkpoint-dir or delete it to start afresh")
    lm.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    opt.load_state_dict(torch.load(ckpt / "optim.pt", weights_only=True))
    return state


@torch.no_grad()
def _validation(lm: torch.nn.Module, frames: int, n: int = 64, seed: int = 10_000) -> dict:
    lm.eval()
    clips = make_dataset(n, frames, seed, mention_prob=1.0)
    loss, per_k = teacher_forced_loss(lm, stack_codes(clips), [c.prompt for c in clips])
    _, per_k_null = teacher_forced_loss(lm, stack_codes(clips), [None] * n)
    lm.train()
    return {"val_loss": float(loss), "val_loss_per_codebook": [round(float(v), 4) for v in per_k],
            "val_loss_null_prompt": float(per_k_null.mean())}


def train(out: str | os.PathLike = WEIGHTS_DIR, *, minutes: float = 18.0, steps: int = 3000, batch: int = 24,
          lr: float = 2e-3, warmup: int = 60, cfg_dropout: float = 0.15, seed: int = 0,
          config: dict | None = None, checkpoint_dir: str | os.PathLike = DEFAULT_CHECKPOINT_DIR,
          checkpoint_every_s: float = 60.0, threads: int = 1, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train (or resume) and write ``testbed.safetensors`` + ``manifest.json`` into ``out``.

    ``stop_after`` ends this invocation after that many steps (a later call resumes from the
    checkpoint). Returns the manifest path. See the module docstring for the procedure.
    """
    torch.set_num_threads(threads)
    model = build_testbed_musicgen(config, seed=seed)
    lm = model.lm
    cfg = lm.testbed_config
    frames = int(round(cfg["train_seconds"] * FRAME_RATE))
    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    identity = {"config": cfg, "seed": seed, "steps": steps, "batch": batch, "lr": lr, "warmup": warmup,
                "cfg_dropout": cfg_dropout, "data_version": DATA_VERSION}
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
        codes, prompts = _batch(seed, step, batch, frames, cfg_dropout)
        loss, _ = teacher_forced_loss(lm, codes, prompts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        step += 1
        value = loss.item()
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
                     "cfg_dropout": cfg_dropout, "frames_per_clip": frames, "threads": threads,
                     "training_seconds": round(state["elapsed_s"], 1), "loss_history": state["history"]},
        "metrics": metrics,
        "parameters": sum(p.numel() for p in lm.parameters()),
    }
    return save_testbed_weights(model, out, seed=seed, extra=extra)


def main(argv: tp.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mstools.testbed.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="where testbed.safetensors and manifest.json go")
    parser.add_argument("--minutes", type=float, default=18.0, help="wall-time cap, counted across resumes")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (length of the LR schedule)")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="resumable checkpoints (default: runs/testbed, or OUT/checkpoints with --smoke)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is much faster than 2 when other jobs share the 2 cores")
    parser.add_argument("--smoke", action="store_true", help="3 tiny steps end to end, in seconds")
    args = parser.parse_args(argv)
    kwargs: dict[str, tp.Any] = dict(minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr,
                                     seed=args.seed, threads=args.threads)
    ckpt = args.checkpoint_dir
    if args.smoke:
        kwargs.update(steps=3, batch=4, warmup=1, config={"train_seconds": 2.0}, progress=False)
        ckpt = ckpt or str(Path(args.out) / "checkpoints")
    manifest = train(args.out, checkpoint_dir=ckpt or DEFAULT_CHECKPOINT_DIR, **kwargs)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
