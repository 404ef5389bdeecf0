"""Activation patching: put clean activations into a corrupted run and measure what comes back.

A *clean* input (codes ``[B, K, T]`` with prompts, e.g. jazz clips prompted "jazz") and a *corrupted*
one (the same codes prompted "rock", or other codes of the same length) run through the model. A
:class:`Patch` names a hook, a time span in seconds (from the model's step clock, so it means the
same under teacher forcing and generation) and, for ``blocks.{l}.attn.hook_z``, a subset of heads;
inside that span the corrupted run gets the clean run's activation there.

Batched. Every sweep runs many patches in **one** forward: the batch is laid out in blocks of B rows,

====================  =====================================================
block                 rows
====================  =====================================================
0 clean               the clean input, untouched (the source of every patch)
1 corrupted           the corrupted input, untouched (the metric's 0)
2 + j                 the corrupted input with patch ``j``
====================  =====================================================

and one hook per patched hook name copies, at each forward call, the clean block's values into the
block of each patch (the clean activations are read live from block 0, so nothing is cached and
the same code serves teacher forcing and step-by-step generation; under classifier-free guidance
the layout repeats in the unconditional half and each half copies from its own clean block). Hooks
go through ``model.hooks``, so they are removed after an exception too.

Metrics:

- :func:`patch_sweep` (teacher forced): mean log-probability per token of the clean codes under
  each block's logits, normalised so that 0 = corrupted and 1 = clean.
- :func:`generative_sweep`: generate every block from its prompts with the patches applied, read
  a factor from the clips with a scorer (the testbed grammar by default) from ``read_from`` seconds
  on, and normalise the share of clips that show the target label the same way.

Results are tidy DataFrames (``hook, layer, t0, t1, head, metric, ...``); :func:`mstools.ui.plots.patching_heatmap` draws
layer x time or layer x head.

Example (genre in the prompt: where does the model use it?):

>>> from mstools.testbed import make_dataset
>>> clips = make_dataset(8, 60, seed=0)
>>> codes = torch.stack([c.codes for c in clips])
>>> patches = layer_time_patches(model, "blocks.{l}.hook_resid_post", window=1.0, duration=6.3)
>>> df = patch_sweep(model, codes, patches=patches, clean_prompts=["jazz"] * 8,
...                  corrupted_prompts=["rock"] * 8)
>>> patching_heatmap(df, x="t0", y="layer")                                            # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch

from mstools.core.names import spec_for

__all__ = ["Patch", "check_patches", "patch_hooks", "run_patched", "clean_logprob", "patch_sweep",
           "generative_sweep", "layer_time_patches", "head_patches"]

Scorer = Callable[[torch.Tensor], pd.DataFrame]


@dataclasses.dataclass(frozen=True)
class Patch:
    """Clean activations at ``hook`` for positions whose time is in ``[t0, t1)`` seconds.

    Attributes:
        hook: a concrete hook name (``"blocks.2.hook_resid_post"``, ``"blocks.1.attn.hook_z"``).
        t0, t1: time span in seconds of the step clock (``step / frame_rate``); None = unbounded.
        heads: for ``attn.hook_z`` only: patch these heads (None = all).

    >>> Patch("blocks.0.hook_resid_post", 1.0, 2.0).describe()["layer"]
    0
    """

    hook: str
    t0: float | None = None
    t1: float | None = None
    heads: tuple[int, ...] | None = None

    def describe(self) -> dict[str, Any]:
        """A flat row: ``hook, layer, t0, t1, head`` (head: an int, ``"0,2"`` for several, or None)."""
        _, layer = spec_for(self.hook)
        head: Any = None
        if self.heads is not None:
            head = self.heads[0] if len(self.heads) == 1 else ",".join(map(str, self.heads))
        return dict(hook=self.hook, layer=-1 if layer is None else layer,
                    t0=0.0 if self.t0 is None else float(self.t0),
                    t1=math.inf if self.t1 is None else float(self.t1), head=head)


def check_patches(model: Any, patches: Sequence[Patch]) -> list[Patch]:
    """Validate patches against ``model`` (unknown hooks get suggestions from ``model.check_names``).

    Raises:
        UnknownHookError: a hook the model does not have.
        ValueError: a glob instead of one name, an unpatchable hook (``hook_logits``), ``t0 >= t1``,
            heads on a hook other than ``attn.hook_z`` or out of range.
    """
    out = []
    for p in patches:
        if not isinstance(p, Patch):
            raise TypeError(f"patches must be Patch objects, got {type(p).__name__}: {p!r}")
        names = model.check_names([p.hook])
        if names != [p.hook]:
            raise ValueError(f"a patch takes one concrete hook name, got {p.hook!r} ({len(names)} hooks)")
        spec, _ = spec_for(p.hook)
        if p.hook == "hook_logits" or not spec.writable:
            raise ValueError(f"{p.hook!r} cannot be patched (it is the output); patch a hook inside "
                             "the model, e.g. 'blocks.0.hook_resid_post'")
        if p.t0 is not None and p.t1 is not None and not p.t0 < p.t1:
            raise ValueError(f"patch time span needs t0 < t1, got [{p.t0}, {p.t1})")
        if p.heads is not None:
            if not p.hook.endswith("attn.hook_z"):
                raise ValueError(f"heads= applies to attn.hook_z hooks, not {p.hook!r}")
            bad = [h for h in p.heads if not 0 <= int(h) < model.num_heads]
            if bad or not p.heads:
                raise ValueError(f"heads must be a non-empty subset of 0..{model.num_heads - 1}, "
                                 f"got {p.heads}")
        out.append(p)
    return out


def _time_mask(seconds: torch.Tensor, t0: float | None, t1: float | None) -> torch.Tensor:
    keep = torch.ones(len(seconds), dtype=torch.bool)
    if t0 is not None:
        keep &= seconds >= t0
    if t1 is not None:
        keep &= seconds < t1
    return keep


def _copy_fn(plans: list[tuple[int, Patch]], block: int, n_blocks: int) -> Callable:
    """Hook: for each (block index, patch), copy block 0's rows into that block inside the span."""
    def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
        r = x.shape[0]
        half = n_blocks * block
        if r not in (half, 2 * half):
            raise RuntimeError(f"patching expected {half} rows (or {2 * half} under CFG), got {r}")
        seconds = hook.clock.seconds
        out = x.clone()
        for b, p in plans:
            pos = _time_mask(seconds, p.t0, p.t1).nonzero().squeeze(1).to(x.device)
            if pos.numel() == 0:
                continue
            for off in range(0, r, half):
                src = x[off:off + block]
                d0 = off + b * block
                if p.heads is None:
                    out[d0:d0 + block, pos] = src[:, pos]
                else:
                    h = torch.tensor(p.heads, dtype=torch.long, device=x.device)
                    out[d0:d0 + block, pos[:, None], h[None, :]] = src[:, pos[:, None], h[None, :]]
        return out
    return patch


def patch_hooks(model: Any, patches: Sequence[Patch], block: int) -> list[tuple[str, Callable]]:
    """``(name, fn)`` hooks for ``model.hooks`` that apply ``patches`` in the block layout.

    The batch (per CFG half) is ``(2 + len(patches)) * block`` rows: block 0 clean, block 1
    corrupted, block ``2 + j`` patched by ``patches[j]`` (see the module docstring).
    """
    patches = check_patches(model, patches)
    n_blocks = 2 + len(patches)
    by_hook: dict[str, list[tuple[int, Patch]]] = {}
    for j, p in enumerate(patches):
        by_hook.setdefault(p.hook, []).append((2 + j, p))
    return [(h, _copy_fn(plans, block, n_blocks)) for h, plans in by_hook.items()]


def _as_prompts(prompts: Sequence[str | None] | str | None, n: int, what: str) -> list[str | None]:
    if prompts is None or isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"{what}: got {len(prompts)} prompts for {n} clips")
    return prompts


def _check_token_lengths(model: Any, prompts: Sequence[str | None]) -> None:
    lengths = {model.backend.prompt_token_lengths(p) for p in dict.fromkeys(prompts)}
    if len(lengths) > 1:
        raise ValueError("clean and corrupted prompts have different token lengths "
                         f"({sorted(lengths)}): in one batch the shorter ones would be padded and "
                         "read the padding; use prompts of equal token length")


def _check_pair(model: Any, clean_codes: torch.Tensor, corrupted_codes: torch.Tensor | None,
                clean_prompts: Any, corrupted_prompts: Any) -> tuple:
    if not isinstance(clean_codes, torch.Tensor) or clean_codes.dim() != 3:
        raise ValueError(f"clean codes must be a LongTensor [B, K, T], got "
                         f"{getattr(clean_codes, 'shape', type(clean_codes).__name__)}")
    corrupted_codes = clean_codes if corrupted_codes is None else corrupted_codes
    if tuple(corrupted_codes.shape) != tuple(clean_codes.shape):
        raise ValueError(f"clean and corrupted inputs have different lengths: clean codes "
                         f"{tuple(clean_codes.shape)}, corrupted {tuple(corrupted_codes.shape)}; "
                         "patching copies position by position, so both need the same [B, K, T]")
    b = clean_codes.shape[0]
    cp = _as_prompts(clean_prompts, b, "clean")
    kp = _as_prompts(corrupted_prompts, b, "corrupted")
    if torch.equal(clean_codes, corrupted_codes) and cp == kp:
        raise ValueError("clean and corrupted inputs are identical: give other codes or prompts")
    _check_token_lengths(model, cp + kp)
    return clean_codes, corrupted_codes, cp, kp


def run_patched(model: Any, clean_codes: torch.Tensor, corrupted_codes: torch.Tensor | None = None,
                patches: Sequence[Patch] = (), *, clean_prompts: Any = None,
                corrupted_prompts: Any = None) -> torch.Tensor:
    """Teacher-forced logits of the clean run, the corrupted run and every patched run, in one forward.

    Args:
        model: a HookedMusicGen.
        clean_codes: LongTensor ``[B, K, T]``.
        corrupted_codes: ``[B, K, T]`` (None: the clean codes, corrupted by the prompts).
        patches: the patches (each applied alone, in its own block of B rows).
        clean_prompts, corrupted_prompts: one text per clip, a single text, or None (unconditional).

    Returns:
        logits ``[2 + P, B, K, S, card]``: index 0 clean, 1 corrupted, ``2 + j`` patch ``j``.

    >>> logits = run_patched(model, codes, codes.flip(0), [Patch("blocks.0.hook_resid_pre")],
    ...                      clean_prompts=prompts, corrupted_prompts=prompts)
    >>> torch.equal(logits[2], logits[0])          # everything patched at the input: clean
    True
    """
    clean_codes, corrupted_codes, cp, kp = _check_pair(model, clean_codes, corrupted_codes,
                                                       clean_prompts, corrupted_prompts)
    b = clean_codes.shape[0]
    hooks = patch_hooks(model, patches, b)
    codes = torch.cat([clean_codes] + [corrupted_codes] * (1 + len(patches)))
    with torch.no_grad(), model.hooks(hooks):
        logits = model(codes, cp + kp * (1 + len(patches)))
    return logits.reshape(2 + len(patches), b, *logits.shape[1:])


def clean_logprob(model: Any, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per token of ``codes`` under teacher-forced ``logits``.

    Args:
        logits: ``[..., B, K, S, card]`` (S = T + K - 1; step s predicts step s + 1).
        codes: ``[B, K, T]``, the codes scored (the clean run's).

    Returns:
        ``[..., B]``: the mean over the valid (non-special) tokens of each clip.
    """
    seq = model.to_sequence(codes)
    target = seq[..., 1:]
    logp = torch.log_softmax(logits[..., :-1, :].float(), dim=-1)
    target = target.expand(*logits.shape[:-4], *target.shape)
    tok = logp.gather(-1, target.clamp(max=model.card - 1).unsqueeze(-1)).squeeze(-1)
    valid = (target != model.special_token_id).to(tok.dtype)
    return (tok * valid).sum(dim=(-1, -2)) / valid.sum(dim=(-1, -2))


def _chunks(patches: Sequence[Patch], b: int, max_batch: int) -> Iterator[list[Patch]]:
    per = max(1, max_batch // b - 2)
    for i in range(0, len(patches), per):
        yield list(patches[i:i + per])


def _normalise(value: float, clean: float, corrupted: float) -> float:
    gap = clean - corrupted
    if abs(gap) < 1e-12:
        return math.nan
    return (value - corrupted) / gap


def patch_sweep(model: Any, clean_codes: torch.Tensor, corrupted_codes: torch.Tensor | None = None, *,
                patches: Sequence[Patch], clean_prompts: Any = None, corrupted_prompts: Any = None,
                max_batch: int = 64) -> pd.DataFrame:
    """Teacher-forced patching sweep: one row per patch, batched ``max_batch`` rows per forward.

    ``metric`` is the clean codes' mean log-probability per token under the patched run, normalised:
    ``(lp_patched - lp_corrupted) / (lp_clean - lp_corrupted)`` (means over the B clips), so 0 =
    corrupted and 1 = clean. With corrupted *codes*, the corrupted and patched runs read the
    corrupted codes and are scored on the clean ones (how much of the clean prediction comes back).

    Returns:
        DataFrame ``hook, layer, t0, t1, head, metric, logprob, logprob_clean, logprob_corrupted``
        (``t1 = inf`` for an open span; ``head`` None unless the patch names heads).
    """
    patches = check_patches(model, patches)
    if not patches:
        raise ValueError("give at least one Patch (see layer_time_patches, head_patches)")
    clean_codes, corrupted_codes, cp, kp = _check_pair(model, clean_codes, corrupted_codes,
                                                       clean_prompts, corrupted_prompts)
    rows = []
    for chunk in _chunks(patches, clean_codes.shape[0], max_batch):
        logits = run_patched(model, clean_codes, corrupted_codes, chunk, clean_prompts=cp,
                             corrupted_prompts=kp)
        lp = clean_logprob(model, logits, clean_codes).mean(dim=1)  # [2 + P]
        lc, lk = float(lp[0]), float(lp[1])
        for j, p in enumerate(chunk):
            v = float(lp[2 + j])
            rows.append(dict(**p.describe(), metric=_normalise(v, lc, lk), logprob=v,
                             logprob_clean=lc, logprob_corrupted=lk))
    return _table(rows)


def _table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df["metric"].isna().any():
        warnings.warn("the clean and corrupted runs score the same: the normalised metric is NaN; "
                      "choose inputs that differ in what the metric reads", stacklevel=3)
    return df


def _scorer(model: Any) -> Scorer:
    if model.scorer is None:
        raise ValueError(f"no scorer for {model.model_name!r}: pass scorer= (codes [B, K, T] -> DataFrame "
                         "with one column per factor), e.g. mstools.evaluation.readout_scorer(...)")
    return model.scorer


def generative_sweep(model: Any, clean_prompts: Sequence[str | None], corrupted_prompts: Sequence[str | None],
                     *, patches: Sequence[Patch], duration: float, factor: str, target: str,
                     read_from: float | None = None, seed: int = 0, scorer: Scorer | None = None,
                     max_batch: int = 64, **generate_kw: Any) -> pd.DataFrame:
    """Generative patching sweep: generate with each patch, read ``factor`` from what follows.

    Every block (clean, corrupted, one per patch) is generated in one batched ``model.generate``
    per chunk; the patched blocks get the clean block's activations live, step by step, inside each
    patch's span. Clips are scored from ``read_from`` seconds to the end (default: the latest patch
    end, so the read is of what the model generated *after* the patch).

    ``metric`` = ``(hit_patched - hit_corrupted) / (hit_clean - hit_corrupted)`` where ``hit`` is
    the share of a block's clips whose ``factor`` reads ``target`` (NaN when clean and corrupted
    hit equally). Blocks of one chunk share one random stream, so the rates are estimates.

    Returns:
        DataFrame ``hook, layer, t0, t1, head, metric, hit, hit_clean, hit_corrupted, n, chunk``.
    """
    patches = check_patches(model, patches)
    if not patches:
        raise ValueError("give at least one Patch")
    b = len(list(clean_prompts))
    cp = _as_prompts(clean_prompts, b, "clean")
    kp = _as_prompts(corrupted_prompts, b, "corrupted")
    if cp == kp:
        raise ValueError("clean and corrupted prompts are identical")
    _check_token_lengths(model, cp + kp)
    scorer = scorer or _scorer(model)
    if read_from is None:
        ends = [p.t1 for p in patches if p.t1 is not None]
        read_from = max(ends) if ends else 0.0
    f0 = int(math.ceil(read_from * model.frame_rate - 1e-9))
    frames = int(round(duration * model.frame_rate))
    if f0 >= frames:
        raise ValueError(f"read_from={read_from} s leaves nothing to read in {duration} s; patch "
                         "earlier spans or generate longer")
    rows = []
    for c, chunk in enumerate(_chunks(patches, b, max_batch)):
        hooks = patch_hooks(model, chunk, b)
        out = model.generate(cp + kp * (1 + len(chunk)), duration, seed=seed + c, fwd_hooks=hooks,
                             decode=False, **generate_kw)
        labels = scorer(out.codes[..., f0:])[factor].to_numpy().reshape(2 + len(chunk), b)
        hit = (labels == target).mean(axis=1)
        for j, p in enumerate(chunk):
            rows.append(dict(**p.describe(), metric=_normalise(hit[2 + j], hit[0], hit[1]),
                             hit=float(hit[2 + j]), hit_clean=float(hit[0]),
                             hit_corrupted=float(hit[1]), n=b, chunk=c))
    return _table(rows)


def layer_time_patches(model: Any, hook: str = "blocks.{l}.hook_resid_post", *, window: float,
                       duration: float, layers: Sequence[int] | None = None) -> list[Patch]:
    """One patch per (layer, time window): ``hook`` with ``{l}`` filled in, windows of ``window``
    seconds tiling ``[0, duration)``.

    >>> [(p.hook, p.t0, p.t1) for p in layer_time_patches(model, window=1.0, duration=2.0, layers=[0])]
    [('blocks.0.hook_resid_post', 0.0, 1.0), ('blocks.0.hook_resid_post', 1.0, 2.0)]
    """
    if not (window > 0 and duration > 0):
        raise ValueError(f"window and duration must be positive seconds, got {window}, {duration}")
    layers = range(model.num_layers) if layers is None else layers
    n = int(math.ceil(duration / window - 1e-9))
    return [Patch(hook.format(l=l), round(i * window, 9), round(min((i + 1) * window, duration), 9))
            for l in layers for i in range(n)]


def head_patches(model: Any, *, layers: Sequence[int] | None = None, t0: float | None = None,
                 t1: float | None = None) -> list[Patch]:
    """One patch per (layer, head) of ``blocks.{l}.attn.hook_z`` over ``[t0, t1)``."""
    layers = range(model.num_layers) if layers is None else layers
    return [Patch(f"blocks.{l}.attn.hook_z", t0, t1, (h,)) for l in layers
            for h in range(model.num_heads)]
