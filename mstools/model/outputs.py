"""What HookedMusicGen returns: activation caches (per CFG branch, with their steps) and generations.

>>> import torch
>>> c = Cache({"h": torch.zeros(1, 5, 2)}, torch.arange(5), num_codebooks=4, frame_rate=10.0)
>>> c.frames.tolist(), c.seconds[-1].item()
([-3, -2, -1, 0, 1], 0.4)
"""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["Cache", "GenerationCache", "GenerationOutput"]


class Cache(dict):
    """Cached activations of one CFG branch: ``name -> Tensor [B, S, ...]`` with their positions.

    Attributes:
        steps: LongTensor [S], absolute LM input step of each position.
        num_codebooks, frame_rate: to map steps to frames and seconds (see :mod:`mstools.core.timeline`).
        branch: ``"cond"`` or ``"uncond"``.
    """

    def __init__(self, acts: dict[str, torch.Tensor], steps: torch.Tensor, num_codebooks: int,
                 frame_rate: float, branch: str = "cond"):
        super().__init__(acts)
        self.steps = steps
        self.num_codebooks = num_codebooks
        self.frame_rate = frame_rate
        self.branch = branch

    @property
    def seconds(self) -> torch.Tensor:
        """Float [S]: time of each position, ``steps / frame_rate``."""
        return self.steps.to(torch.float64) / self.frame_rate

    @property
    def frames(self) -> torch.Tensor:
        """Long [S]: frame completed at each position (``step - K + 1``; < 0 before frame 0)."""
        return self.steps - self.num_codebooks + 1

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self.items())[:3])
        more = f", ... ({len(self)} hooks)" if len(self) > 3 else ""
        return f"Cache[{self.branch}]({shapes}{more}; steps {len(self.steps)})"


@dataclasses.dataclass
class GenerationCache:
    """Activations recorded step by step during generation, stitched along S, split by CFG branch."""

    cond: Cache
    uncond: Cache | None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cond[name]

    @property
    def steps(self) -> torch.Tensor:
        return self.cond.steps


@dataclasses.dataclass
class GenerationOutput:
    """What :meth:`HookedMusicGen.generate` returns.

    Attributes:
        codes: LongTensor [B, K, T] (audio prompt frames included when continuing a clip).
        audio: Tensor [B, C, N] at ``sample_rate``.
        sample_rate: audio sample rate (Hz).
        prompts: the text prompts.
        seed: the seed used.
        cache: :class:`GenerationCache` when ``cache=`` was asked for, else None.
    """

    codes: torch.Tensor
    audio: torch.Tensor
    sample_rate: int
    prompts: list[str | None]
    seed: int | None
    cache: GenerationCache | None = None


