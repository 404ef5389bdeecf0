"""Steps, frames and seconds under MusicGen's delay pattern.

MusicGen interleaves its K codebooks with a *delay pattern*: the LM's sequence step ``s`` holds
codebook ``k`` of audio frame ``s - 1 - k`` (step 0 holds only special tokens). So:

- The activation at input step ``s`` produces the logits that predict codebook ``k`` of frame ``s - k``.
- Frame ``f`` is *completed* at step ``f + K - 1``: there the model predicts its last codebook,
  having read codebooks ``0..K-2`` of frame ``f``. mstools aligns per-frame activations to that step
  (it exists both under teacher forcing and during generation, for every frame ``0..T-1``).
- A generation step's time in seconds is that of the frame whose first codebook it predicts:
  ``seconds(s) = s / frame_rate``. Steering schedules use it; it comes from the step counter, never
  from a tensor index (every generation step has sequence length 1).

Example (K = 4 codebooks, 10 frames per second):

>>> frame_of_step(5, codebook=0, num_codebooks=4)   # step 5 holds codebook 0 of frame 4
4
>>> completing_step(0, num_codebooks=4)             # frame 0 is completed at step 3
3
>>> seconds_of_step(25, frame_rate=10.0)
2.5
"""
from __future__ import annotations

import torch

__all__ = [
    "frame_of_step",
    "completing_step",
    "seconds_of_step",
    "num_steps",
    "frame_steps",
]


def frame_of_step(step: int, codebook: int, num_codebooks: int) -> int:
    """Frame whose codebook ``codebook`` is held at sequence step ``step`` (may be < 0: none)."""
    if not 0 <= codebook < num_codebooks:
        raise ValueError(f"codebook must be in [0, {num_codebooks}), got {codebook}")
    return step - 1 - codebook


def completing_step(frame: int, num_codebooks: int) -> int:
    """Input step at which the model predicts the last codebook of ``frame``: ``frame + K - 1``."""
    return frame + num_codebooks - 1


def seconds_of_step(step: int | torch.Tensor, frame_rate: float) -> float | torch.Tensor:
    """Time (s) of the frame whose first codebook is predicted at ``step``: ``step / frame_rate``."""
    return step / frame_rate


def num_steps(frames: int, num_codebooks: int) -> int:
    """Number of LM input steps that cover ``frames`` frames: ``frames + K - 1``."""
    return frames + num_codebooks - 1


def frame_steps(steps: torch.Tensor, num_codebooks: int, frames: int | None = None) -> torch.Tensor:
    """Positions in ``steps`` of the completing step of each frame.

    Args:
        steps: LongTensor [S], the absolute input step of each cached position.
        num_codebooks: K.
        frames: number of frames wanted (default: every frame whose completing step is present).

    Returns:
        LongTensor [F]: index into the S axis for frames ``0..F-1``.

    Raises:
        ValueError: when a wanted frame's completing step was not cached.
    """
    steps = torch.as_tensor(steps, dtype=torch.long)
    pos = {int(s): i for i, s in enumerate(steps.tolist())}
    if frames is None:
        frames = max(0, int(steps.max()) - num_codebooks + 2) if len(steps) else 0
    out = []
    for f in range(frames):
        s = completing_step(f, num_codebooks)
        if s not in pos:
            raise ValueError(
                f"frame {f} needs step {s}, which is not in the cached steps "
                f"[{int(steps.min())}..{int(steps.max())}]; cache more steps or ask for fewer frames")
        out.append(pos[s])
    return torch.tensor(out, dtype=torch.long)
