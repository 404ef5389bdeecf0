"""Paired sampling: every clip draws its own random numbers, keyed by (seed, noise id, step).

MusicGen samples each step's tokens with one random stream for the whole batch, so a clip's tokens
depend on its position in the batch and on the other clips. To compare a steered clip with its
unsteered twin (same prompt, same seed) inside one batched generate, mstools can sample with the
**Gumbel-max trick** instead: a hook on ``hook_logits`` adds ``temperature * g`` to the logits, where
``g`` is Gumbel noise computed from ``(seed, noise_id, step, codebook, token)`` by an integer hash,
masks the tokens outside top-k / top-p, and the backend then picks the argmax (greedy decoding).
``argmax(l / T + g)`` is an exact sample of ``softmax(l / T)`` (restricted to top-k or top-p like the
backends' samplers), so the distribution is unchanged; but two clips with the same noise id and seed
see the same numbers wherever they sit in a batch, so their difference is due to what differs
between them (a steering vector, a prompt), not to sampling luck.

Guidance: the backend combines ``l = u + c (l_cond - u)``; the same ``g`` is added to the conditional
and the unconditional row of a clip, so ``l`` moves by exactly ``g`` (``(1 - c) + c = 1``).

>>> u = uniform(seed=0, ids=torch.tensor([3, 3]), steps=torch.tensor([5]), codebooks=1, card=4)
>>> bool((u[0] == u[1]).all()), tuple(u.shape)
(True, (2, 1, 1, 4))
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["uniform", "gumbel", "paired_sampling_hook", "NEG"]

#: Logit given to tokens outside top-k / top-p (finite: guidance multiplies logits by 1 - c < 0).
NEG = -1e4
_M = 0x45D9F3B
_MASK = (1 << 32) - 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values < 2**32."""
    x = (((x >> 16) ^ x) * _M) & _MASK
    x = (((x >> 16) ^ x) * _M) & _MASK
    return (x >> 16) ^ x


def uniform(seed: int, ids: torch.Tensor, steps: torch.Tensor, codebooks: int, card: int) -> torch.Tensor:
    """Uniform numbers in (0, 1), float64 ``[R, K, S, card]``, a pure function of
    ``(seed, ids[r], steps[s], k, token)``."""
    r = ids.to(torch.int64).view(-1, 1, 1, 1) & _MASK
    s = steps.to(torch.int64).view(1, 1, -1, 1) & _MASK
    k = torch.arange(codebooks, dtype=torch.int64).view(1, -1, 1, 1)
    v = torch.arange(card, dtype=torch.int64).view(1, 1, 1, -1)
    h = _mix(torch.full((), int(seed) & _MASK, dtype=torch.int64) ^ 0x9E3779B9)
    h = _mix(h ^ r)
    h = _mix((h + 0x7F4A7C15) ^ s)
    h = _mix((h + 0x632BE5AB) ^ k)
    h = _mix((h + 0x2545F491) ^ v)
    return (h.double() + 0.5) / float(1 << 32)


def gumbel(seed: int, ids: torch.Tensor, steps: torch.Tensor, codebooks: int, card: int) -> torch.Tensor:
    """Gumbel(0, 1) noise ``[R, K, S, card]`` from :func:`uniform`."""
    return -torch.log(-torch.log(uniform(seed, ids, steps, codebooks, card)))


def _keep_mask(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Tokens the sampler may pick (audiocraft's rule: top-p when ``top_p > 0``, else top-k)."""
    card = logits.shape[-1]
    if top_p > 0:
        probs = torch.softmax(logits.double(), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above
        keep_sorted = before <= top_p
        return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if 0 < top_k < card:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        return logits >= kth
    return torch.ones_like(logits, dtype=torch.bool)


def paired_sampling_hook(seed: int, noise_ids: Sequence[int], *, temperature: float, top_k: int,
                         top_p: float, cfg_coef: float) -> Callable[..., torch.Tensor]:
    """A ``hook_logits`` hook that turns greedy decoding into paired sampling (see module doc).

    Args:
        seed: the generation seed.
        noise_ids: one id per clip (the conditional rows ``[:B]``; the unconditional row of a clip
            gets the same noise).
        temperature: T > 0; top_k / top_p / cfg_coef: as the backend would use them.
    """
    ids = torch.as_tensor(list(noise_ids), dtype=torch.int64)
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"paired sampling needs temperature > 0, got {temperature}")

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        rows, k, s, card = x.shape
        b = len(ids)
        if rows not in (b, 2 * b):
            raise ValueError(f"paired sampling: the logits have {rows} rows for {b} noise ids")
        steps = hook.clock.steps.to(torch.int64)
        if steps.numel() != s:
            steps = torch.arange(s, dtype=torch.int64)
        x32 = x.float()
        if rows == 2 * b:  # [cond B | uncond B]: the backend will use u + c (cond - u)
            combined = x32[b:] + cfg_coef * (x32[:b] - x32[b:])
        else:
            combined = x32
        keep = _keep_mask(combined / t, int(top_k or 0), float(top_p or 0.0))
        g = gumbel(seed, ids, steps, k, card).to(x.device)
        # noisy = l + T g on kept tokens; NEG elsewhere (reached through the combination: added
        # to both rows, a shift d becomes u + d + c (cond - u) = l + d)
        delta = torch.where(keep, t * g, torch.full_like(g, NEG) - combined.double()).to(x.dtype)
        if rows == 2 * b:
            delta = torch.cat([delta, delta])
        return x + delta

    return hook
