"""Train the frame classifier inside the testbed's transformers EnCodec encoder (audio -> codes).

    python -m mstools.testbed.train_encodec [--minutes 15 | --steps N] [--seed 0] [--out mstools/testbed/weights]

The decoder of the testbed's EnCodec (:mod:`mstools.testbed.hf_codec`) is written down exactly from
``SynthCodec``; its encoder must read four tokens back from each 1600-sample frame, loudness included
(1.5 dB steps over 47 dB), which no linear map does. The encoder's convolutions only gather each
frame's samples (written down too); what is learned is the per-frame head that EnCodec's encoder ends
with: a linear map of the frame (the last strided convolution), its LSTM used as a per-frame layer
(no recurrent weights, forget gate shut), ELU, and the final convolution whose 128 outputs are four
blocks of 32 scores (the quantizer picks the best score of each block).

Training frames are ``SynthCodec`` renders: half with tokens the grammar uses (pitch < 24, timbre
< 8, drums 1-6 on onsets and 0 on held frames, loudness 8-11 / 18-21), half uniform over all tokens.
Cross-entropy per codebook, Adam with a cosine learning rate, one thread. ``--minutes`` stops on the
clock (the shipped head: 15 minutes, 20,091 steps); ``--steps`` makes a run repeatable. Writes
``encodec_head.safetensors`` and ``encodec_head.json`` (sha256, steps, accuracies on held-out grammar and
random frames).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from mstools.testbed.codec import SynthCodec
from mstools.core.fileio import atomic_write_bytes, save_safetensors, sha256_file
from mstools.testbed.model import WEIGHTS_DIR

__all__ = ["FrameHead", "sample_frames", "train", "HEAD_FILE", "HEAD_MANIFEST", "HIDDEN"]

HEAD_FILE = "encodec_head.safetensors"
HEAD_MANIFEST = "encodec_head.json"
HIDDEN = 256
GRAMMAR_LOUDNESS = (8, 9, 10, 11, 18, 19, 20, 21)


class FrameHead(nn.Module):
    """frame [N, hop] -> scores [N, 4, card]: linear -> LSTM cell (zero state) + skip -> ELU -> linear."""

    def __init__(self, hop: int = 1600, hidden: int = HIDDEN, card: int = 32, codebooks: int = 4):
        super().__init__()
        self.inp = nn.Linear(hop, hidden)
        self.gates = nn.Linear(hidden, 4 * hidden)   # LSTM's weight_ih / bias (i, f, g, o)
        self.out = nn.Linear(hidden, codebooks * card)
        self.card, self.codebooks, self.hidden = card, codebooks, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.inp(x)
        i, _, g, o = self.gates(f).chunk(4, dim=-1)
        h = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))
        y = nn.functional.elu(h + f)
        return self.out(y).view(-1, self.codebooks, self.card)


def sample_frames(codec, n: int, gen: torch.Generator, grammar_share: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames [n, hop], tokens [n, 4])``: SynthCodec renders of grammar-like and uniform tokens."""
    card = codec.cardinality
    tok = torch.randint(0, card, (n, 4), generator=gen)
    gram = torch.rand(n, generator=gen) < grammar_share
    m = int(gram.sum())
    if m:
        onset = torch.rand(m, generator=gen) < 0.5
        inst = torch.randint(0, 4, (m,), generator=gen)
        tok[gram, 0] = torch.randint(0, 24, (m,), generator=gen)
        tok[gram, 1] = 2 * inst + (~onset).long()
        tok[gram, 2] = torch.where(onset, torch.randint(1, 7, (m,), generator=gen), torch.zeros(m, dtype=torch.long))
        tok[gram, 3] = torch.tensor(GRAMMAR_LOUDNESS)[torch.randint(0, 8, (m,), generator=gen)]
    with torch.no_grad():
        frames = codec.decode(tok[:, :, None]).reshape(n, -1)
    return frames, tok


def accuracy(head: FrameHead, frames: torch.Tensor, tok: torch.Tensor) -> list[float]:
    with torch.no_grad():
        pred = torch.cat([head(frames[i:i + 4096]).argmax(-1) for i in range(0, len(frames), 4096)])
    return [float(v) for v in (pred == tok).float().mean(0)]


def train(minutes: float = 15.0, seed: int = 0, batch: int = 512, lr: float = 2e-3,
          log: bool = True, steps: int | None = None) -> tuple[FrameHead, dict]:
    torch.set_num_threads(1)
    codec = SynthCodec()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = FrameHead(hop=codec.hop, card=codec.cardinality)
    with torch.no_grad():  # the forget gate is never used (zero state): keep it shut
        head.gates.weight[HIDDEN:2 * HIDDEN].zero_()
        head.gates.bias[HIDDEN:2 * HIDDEN].fill_(-100.0)
    params = [p for p in head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    val_gram = sample_frames(codec, 8192, torch.Generator().manual_seed(10_000 + seed), 1.0)
    val_rand = sample_frames(codec, 8192, torch.Generator().manual_seed(20_000 + seed), 0.0)
    start, step = time.time(), 0
    total = minutes * 60
    while (step < steps) if steps else (time.time() - start < total):
        frac = step / steps if steps else (time.time() - start) / total
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        x, y = sample_frames(codec, batch, gen)
        loss = nn.functional.cross_entropy(head(x).reshape(-1, codec.cardinality), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            head.gates.weight.grad[HIDDEN:2 * HIDDEN].zero_()
            head.gates.bias.grad[HIDDEN:2 * HIDDEN].zero_()
        opt.step()
        step += 1
        if log and step % 500 == 0:
            print(f"step {step} ({time.time() - start:.0f} s) loss {loss.item():.4f} "
                  f"grammar {accuracy(head, *val_gram)} random {accuracy(head, *val_rand)}", flush=True)
    info = {"steps": step, "seconds": round(time.time() - start, 1), "seed": seed, "batch": batch,
            "lr": lr, "accuracy_grammar_frames": accuracy(head, *val_gram),
            "accuracy_random_frames": accuracy(head, *val_rand)}
    return head.eval(), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="train this long (default 15)")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    args = p.parse_args(argv)
    head, info = train(args.minutes, args.seed, steps=args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.detach().contiguous() for k, v in head.state_dict().items()}, out / HEAD_FILE)
    info.update(weights=HEAD_FILE, sha256=sha256_file(out / HEAD_FILE), hidden=HIDDEN)
    atomic_write_bytes(out / HEAD_MANIFEST, (json.dumps(info, indent=2) + "\n").encode())
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
