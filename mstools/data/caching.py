"""Cache pooled activations of a source of clips into an :class:`~mstools.data.store.ActivationStore`.

:func:`cache_activations` streams a source (:mod:`mstools.data.sources`) through the model in batches,
pools every hook over time, and writes the rows through the store's writer, so memory holds one
batch and one shard whatever the number of clips. How a batch is computed depends on its kind:

========================  ==========================================================================
item kind                 computation
========================  ==========================================================================
``codes``                 teacher forcing (:meth:`HookedMusicGen.run_with_cache`) with the prompts
``audio``                 read (cropped to ``duration`` s if given), encoded, then teacher forcing
``prompt``                :meth:`HookedMusicGen.generate` with ``cache=`` (step by step)
``continuation``          ``generate`` with the first ``audio_prompt_seconds`` of the file as prompt
========================  ==========================================================================

Branches. ``"cond"`` rows are the activations with the item's prompt. ``"uncond"`` rows are the
classifier-free-guidance half: for generated items the CFG rows of the same sampling run; for
teacher-forced items a second forward pass of the same codes with the null condition (the
condition CFG uses).

Batches. Items are grouped so that a batch is computable and its rows do not depend on their
neighbours: same kind, same length (codes frames; audio sample rate and samples used), and the same
*text token length* for every text conditioner that exposes ``tokenize`` (audiocraft's
cross-attention has no padding mask, so with a T5 or whitespace-LUT conditioner a padded prompt
attends to its padding; with one token length per batch there is no padding). The testbed's
conditioner (fixed slots) and the ``noop`` LUT (one token) have one length for every prompt, so
grouping changes nothing there. Items are buffered per group and a batch is emitted when its group
holds ``batch_size`` items (the remainders at the end, in order of first appearance); batches are
numbered in emission order. Batch ``j`` is sampled with seed :func:`batch_seed` ``(seed, j)``.

Resume and ranks. Batches are a function of the source alone, never of what is already stored: a
resumed run recomputes a batch only if one of its clips is missing (with the same members and the
same seed, so the rows are bit for bit those of an uninterrupted run) and adds only the missing
clips. With ``world_size`` ranks (``torchrun``), rank ``r`` computes batches ``j % world_size == r``
(whole batches rather than items: a batch's composition and seed, hence its rows, are then the same
for any number of ranks). Each rank writes its own shards; the store is merged in source order.

Example:

>>> import mstools
>>> from mstools.data.sources import testbed_clips
>>> model = mstools.build_musicgen("tiny")
>>> store = cache_activations(model, testbed_clips(6, seconds=1.0), "acts",
...                           hooks="blocks.*.hook_resid_post", progress=False)
>>> tuple(store.features("blocks.1.hook_resid_post").shape), len(store.labels["genre"])
((6, 32), 6)
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from mstools.core.errors import BadInputError
from mstools.model.hooked import Cache, HookedMusicGen
from mstools.core.names import NamesFilter
from mstools.core.memory import young_collections_only
from mstools.data.pooling import Pooling, as_pooling
from mstools.data.sources import Item, audio_info, describe_source, load_audio
from mstools.data.store import ActivationStore

__all__ = ["cache_activations", "plan_batches", "Batch", "batch_seed", "compute_batch",
           "resolve_hooks", "BRANCHES", "DISTRIBUTED_TIMEOUT"]

BRANCHES = ("cond", "uncond")
#: How long a rank waits at a barrier for the others (ranks may finish far apart on big sources).
DISTRIBUTED_TIMEOUT = datetime.timedelta(hours=24)
_TOKEN_MEMO = 4096


@dataclasses.dataclass
class Batch:
    """Items computed together.

    Attributes:
        index: global batch number (emission order; see the module docstring).
        kind: the items' kind (``"codes"``, ``"audio"``, ``"prompt"``, ``"continuation"``).
        items: the items, in source order.
        seed: RNG seed of this batch's sampling (:func:`batch_seed`).
    """

    index: int
    kind: str
    items: list[Item]
    seed: int


def batch_seed(seed: int, index: int) -> int:
    """Sampling seed of batch ``index``: ``seed * 1_000_003 + index`` (distinct streams per batch).

    >>> batch_seed(0, 0), batch_seed(1, 2)
    (0, 1000005)
    """
    return int(seed) * 1_000_003 + int(index)


class _TokenLengths:
    """Token length of a prompt under each of the model's text encoders (memoised)."""

    def __init__(self, model: HookedMusicGen):
        self.backend = model.backend
        self.memo: dict[str | None, tuple] = {}

    def __call__(self, prompt: str | None) -> tuple:
        if prompt in self.memo:
            return self.memo[prompt]
        key = self.backend.prompt_token_lengths(prompt)
        if len(self.memo) >= _TOKEN_MEMO:
            self.memo.clear()
        self.memo[prompt] = key
        return key


def _used_frames(path: str, seconds: float | None) -> tuple[int, int]:
    """(sample rate, samples read) of ``load_audio(path, seconds)``, from the header only."""
    frames, sr, _ = audio_info(path)
    if seconds is not None:
        frames = min(frames, max(1, int(round(seconds * sr))))
    return sr, frames


def _group_key(item: Item, tokens: _TokenLengths, duration: float | None) -> tuple:
    kind = item.kind
    if kind == "codes":
        length: Any = tuple(item.codes.shape)
    elif kind == "audio":
        length = _used_frames(item.audio_path, duration)
    elif kind == "continuation":
        length = _used_frames(item.audio_path, item.audio_prompt_seconds)
    else:
        length = None
    return kind, tokens(item.prompt), length


def _plan(model: HookedMusicGen, source: Iterable[Item], batch_size: int, seed: int,
          duration: float | None, clip_ids: list[str] | None = None) -> Iterator[Batch]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    tokens = _TokenLengths(model)
    groups: dict[tuple, list[Item]] = {}
    seen: set[str] = set()
    index = 0
    for item in source:
        if not isinstance(item, Item):
            raise TypeError(f"a source yields mstools.data.sources.Item objects, got {type(item).__name__}")
        if item.clip_id in seen:
            raise ValueError(f"clip id {item.clip_id!r} appears twice in the source; clip ids "
                             "must be unique")
        seen.add(item.clip_id)
        if clip_ids is not None:
            clip_ids.append(item.clip_id)
        key = _group_key(item, tokens, duration)
        group = groups.setdefault(key, [])
        group.append(item)
        if len(group) == batch_size:
            del groups[key]
            yield Batch(index, key[0], group, batch_seed(seed, index))
            index += 1
    for key, group in groups.items():  # remainders, in order of first appearance
        yield Batch(index, key[0], group, batch_seed(seed, index))
        index += 1


def plan_batches(model: HookedMusicGen, source: Iterable[Item], batch_size: int = 8, *,
                 seed: int = 0, duration: float | None = None) -> Iterator[Batch]:
    """The batches :func:`cache_activations` computes, in order (see the module docstring).

    Reads only audio file headers; streams the source.

    Example:
        >>> from mstools.data.sources import testbed_clips
        >>> [(b.index, b.kind, len(b.items)) for b in plan_batches(model, testbed_clips(5), 2)]
        [(0, 'codes', 2), (1, 'codes', 2), (2, 'codes', 1)]
    """
    return _plan(model, source, batch_size, seed, duration)


# ----------------------------------------------------------------------------- computing

def _mono_or_stereo(wav: torch.Tensor, channels: int) -> torch.Tensor:
    from audiocraft.data.audio_utils import convert_audio_channels  # lazy: audiocraft is heavy; only this path needs it
    return convert_audio_channels(wav, channels)


def _load_batch_audio(model: HookedMusicGen, items: Sequence[Item],
                      seconds: Sequence[float | None]) -> tuple[torch.Tensor, int]:
    """Audio of the items as ``[B, C, N]`` (model's channel count) and its sample rate."""
    wavs, rates = [], set()
    for item, s in zip(items, seconds):
        wav, sr = load_audio(item.audio_path, s)
        wavs.append(_mono_or_stereo(wav, model.channels))
        rates.add(sr)
    if len(rates) != 1 or len({w.shape[-1] for w in wavs}) != 1:  # the planner groups them
        raise RuntimeError("audio of one batch must share sample rate and length")
    return torch.stack(wavs), rates.pop()


def _pool_cache(model: HookedMusicGen, cache: Cache, names: Sequence[str],
                pooling: Pooling) -> dict[str, torch.Tensor]:
    return {n: pooling(cache[n], cache.steps, num_codebooks=model.num_codebooks,
                       frame_rate=model.frame_rate) for n in names}


def _generation_duration(model: HookedMusicGen, duration: float | None) -> float:
    return float(model.duration if duration is None else duration)


def compute_batch(model: HookedMusicGen, batch: Batch, hooks: Sequence[str], pooling: Pooling,
                  branches: Sequence[str] = ("cond",),
                  duration: float | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Pooled activations of one batch: ``{branch: {hook: Tensor [B, ...] or [B, F, ...]}}``.

    Args:
        model: the hooked model.
        batch: a :class:`Batch` (one kind, one length, one token length).
        hooks: hook names (already resolved).
        pooling: how to pool time.
        branches: ``"cond"`` and/or ``"uncond"``.
        duration: generation length in seconds (prompts, continuations; default: the model's
            generation duration); audio files are cropped to their first ``duration`` seconds.
    """
    items, kind = batch.items, batch.kind
    prompts = [it.prompt for it in items]
    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        if kind in ("codes", "audio"):
            if kind == "codes":
                codes = torch.stack([it.codes for it in items])
            else:
                wav, sr = _load_batch_audio(model, items, [duration] * len(items))
                codes = model.encode_audio(wav, sr)
            if "cond" in branches:
                _, cache = model.run_with_cache(codes, prompts, names_filter=list(hooks))
                out["cond"] = _pool_cache(model, cache, hooks, pooling)
                del cache
            if "uncond" in branches:
                _, cache = model.run_with_cache(codes, None, names_filter=list(hooks))
                out["uncond"] = _pool_cache(model, cache, hooks, pooling)
                del cache
            return out
        seconds = _generation_duration(model, duration)
        kwargs: dict[str, Any] = {}
        if kind == "continuation":
            aps = max(it.audio_prompt_seconds for it in items)
            if seconds <= aps:
                raise ValueError(f"duration {seconds:g} s must exceed the audio prompt "
                                 f"({aps:g} s): it counts the prompt too")
            wav, sr = _load_batch_audio(model, items, [it.audio_prompt_seconds for it in items])
            kwargs = dict(audio_prompt=wav, audio_prompt_sample_rate=sr)
        else:
            kwargs = dict(decode=False)
        gen = model.generate(prompts, seconds, seed=batch.seed, cache=list(hooks),
                             cache_uncond="uncond" in branches, **kwargs)
        caches = {"cond": gen.cache.cond, "uncond": gen.cache.uncond}
        for branch in branches:
            if caches[branch] is None:
                raise RuntimeError(f"generation gave no {branch!r} rows (no classifier-free "
                                   "guidance batch); cache only 'cond'")
            out[branch] = _pool_cache(model, caches[branch], hooks, pooling)
        return out


# ----------------------------------------------------------------------------- the store

def resolve_hooks(model: HookedMusicGen, hooks: NamesFilter) -> list[str]:
    names = model.check_names(hooks)
    if not names:
        raise ValueError(f"hooks {hooks!r} select no hook point; see model.describe_hooks()")
    if "hook_logits" in names:
        raise ValueError("hook_logits is [B, K, S, card], not [B, S, ...]; cache "
                         "'ln_final.hook_normalized' (its input) instead")
    return names


def _as_branches(branches: str | Sequence[str]) -> list[str]:
    branches = [branches] if isinstance(branches, str) else list(branches)
    bad = [b for b in branches if b not in BRANCHES]
    if not branches or bad or len(set(branches)) != len(branches):
        raise ValueError(f"branches must be distinct names among {BRANCHES}, got {branches!r}")
    return branches


def _distributed() -> Any:
    """``torch.distributed`` when a process group is initialised, else None."""
    import torch.distributed as dist  # lazy: only under torchrun
    return dist if dist.is_available() and dist.is_initialized() else None


def _open_store(out: str | os.PathLike, model: HookedMusicGen, names: list[str], pooling: Pooling,
                dtype: torch.dtype, branches: list[str], meta: dict[str, Any],
                rank: int, dist: Any) -> ActivationStore:
    path = Path(out)
    def create() -> ActivationStore:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ActivationStore.create(
                path, fingerprint=model.fingerprint, hooks={n: list(model.hook_shape(n)) for n in names},
                pooling=pooling, dtype=dtype, branches=branches, num_codebooks=model.num_codebooks,
                frame_rate=model.frame_rate, meta=meta, exist_ok=True)

    if dist is None:
        return create()
    store = create() if rank == 0 else None  # rank 0 creates; the others open it afterwards
    dist.barrier()
    return store if store is not None else create()


def _clip_seconds(model: HookedMusicGen, item: Item, duration: float | None) -> float:
    """How many seconds of activations an item gives."""
    if item.kind == "codes":
        return item.codes.shape[-1] / model.frame_rate
    if item.kind == "audio":
        frames, sr, _ = audio_info(item.audio_path)
        seconds = frames / sr
        return min(seconds, duration) if duration is not None else seconds
    return _generation_duration(model, duration)


def _check_window_reaches(model: HookedMusicGen, source: Iterable[Item], pooling: Pooling,
                          duration: float | None) -> None:
    """Refuse a pooling window that starts after the clips end (checked on the first item)."""
    if pooling.window is None or not hasattr(source, "__iter__"):
        return
    first = next(iter(source), None)
    if first is None:
        return
    seconds = _clip_seconds(model, first, duration)
    if pooling.window[0] >= seconds:
        raise BadInputError(f"pooling window {pooling.window} starts after the clips end (the first "
                            f"clip gives {seconds:g} s); choose a window inside the clip")


def _labels(item: Item) -> dict[str, Any]:
    labels = dict(item.labels)
    labels.setdefault("prompt", item.prompt)
    return labels


def cache_activations(model: HookedMusicGen, source: Iterable[Item], out: str | os.PathLike,
                      hooks: NamesFilter = "blocks.*.hook_resid_post",
                      pooling: Pooling | str = Pooling("mean"), *, batch_size: int = 8,
                      branches: str | Sequence[str] = ("cond",), duration: float | None = None,
                      seed: int = 0, dtype: torch.dtype = torch.float16, shard_rows: int = 1024,
                      progress: bool = True, rank: int = 0, world_size: int = 1) -> ActivationStore:
    """Cache pooled activations of every item of ``source`` into a store at ``out`` (resumable).

    Args:
        model: a :class:`~mstools.model.hooked.HookedMusicGen`.
        source: items (:mod:`mstools.data.sources`, or any sized iterable of :class:`Item`).
        out: store directory; created, or reopened to resume (refused if it was made with another
            model fingerprint, backend, hooks, pooling, dtype, branches, source, seed, duration or
            batch size).
        hooks: hook names / glob / list (e.g. ``"blocks.*.hook_resid_post"``).
        pooling: :class:`~mstools.data.pooling.Pooling` or a mode name (``"mean"``, ``"last"``,
            ``"frame"``).
        batch_size: items per forward pass or generation.
        branches: ``"cond"`` and/or ``"uncond"`` (see the module docstring).
        duration: seconds generated for prompt and continuation items (audio prompt included;
            default: the model's generation duration); audio files are cropped to their first
            ``duration`` seconds (default: whole files).
        seed: base sampling seed (batch ``j`` uses ``batch_seed(seed, j)``).
        dtype: dtype stored on disk.
        shard_rows: rows per shard file (bounds memory).
        progress: show a tqdm bar (rank 0 only).
        rank, world_size: this process's share: batches ``j % world_size == rank``. With a
            ``torch.distributed`` process group (``torchrun``), ranks synchronise and rank 0 merges
            the store in source order; without one and ``world_size > 1``, call
            ``ActivationStore.merge(out, order=[clip ids in source order])`` once every rank is done.

    Returns:
        The store (merged, when this process can merge it).

    Raises:
        StoreError: ``out`` holds a store made with other settings.
        ValueError: unknown hooks, bad pooling/branches/batch size, a clip the model cannot read
            (the message names the clips of the batch).

    Example:
        >>> from mstools.data.sources import prompt_set
        >>> store = cache_activations(tiny, prompt_set(["{genre} music"], {"genre": ["jazz", "rock"]}),
        ...                           "prompt_acts", branches=("cond", "uncond"), duration=0.5, progress=False)
        >>> store.labels[["branch", "genre"]].values.tolist()
        [['cond', 'jazz'], ['uncond', 'jazz'], ['cond', 'rock'], ['uncond', 'rock']]
    """
    # everything is checked before anything is written: a refused call leaves no stub store
    names = resolve_hooks(model, hooks)
    pooling = as_pooling(pooling)
    branches = _as_branches(branches)
    if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
        raise BadInputError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                 or not (math.isfinite(duration) and duration > 0)):
        raise BadInputError(f"duration must be a positive number of seconds, got {duration!r}")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"{name} must be an integer >= 1, got {value!r}")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise BadInputError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype!r}")
    _check_window_reaches(model, source, pooling, duration)
    dist = _distributed() if world_size > 1 else None
    meta = {"model": model.model_name, "source": describe_source(source), "seed": int(seed),
            "duration": duration, "batch_size": int(batch_size)}
    # the same weights have the same fingerprint in either backend, but the two implementations'
    # rows differ in the last bits: a store keeps one backend. Absent = audiocraft (stores written
    # before the transformers backend existed stay resumable).
    if model.backend_name != "audiocraft":
        meta["backend"] = model.backend_name
    store = _open_store(out, model, names, pooling, dtype, branches, meta, rank, dist)
    done = store.done_clips()
    if world_size == 1 and _complete(store, source, done):
        return store  # nothing to compute or merge: no file is touched (a read-only copy works)
    clip_ids: list[str] = []
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm  # lazy: only for progress bars
        total = len(source) if hasattr(source, "__len__") else None
        desc = "cache" if world_size == 1 else f"cache (rank 0 of {world_size})"
        bar = tqdm(total=total, desc=desc, unit="clip")
    try:
        # merged once at the end, in the source's order (not by the writer)
        with young_collections_only(), \
                store.writer(shard_rows=shard_rows, rank=rank, world_size=world_size, merge=False) as writer:
            for batch in _plan(model, source, batch_size, seed, duration, clip_ids):
                mine = batch.index % world_size == rank
                todo = [it for it in batch.items if it.clip_id not in done] if mine else []
                if todo:
                    try:
                        acts = compute_batch(model, batch, names, pooling, branches, duration)
                    except Exception as err:
                        ids = [it.clip_id for it in batch.items]
                        err.add_note(f"(while caching batch {batch.index}: clips {ids})")
                        raise
                    rows = [i for i, item in enumerate(batch.items) if item.clip_id not in done]
                    if len(branches) == 1:   # the batch's clips in one call
                        index = torch.tensor(rows)
                        writer.add([batch.items[i].clip_id for i in rows],
                                   {h: acts[branches[0]][h].index_select(0, index) for h in names},
                                   [_labels(batch.items[i]) for i in rows], branch=branches[0])
                    else:                    # a clip's rows of every branch together
                        for i in rows:
                            for branch in branches:
                                writer.add([batch.items[i].clip_id], {h: acts[branch][h][i:i + 1] for h in names},
                                           [_labels(batch.items[i])], branch=branch)
                    del acts
                if bar is not None:
                    bar.update(len(batch.items))
    finally:
        if bar is not None:
            bar.close()
    return _finish(store, clip_ids, world_size, rank, dist)


def _complete(store: ActivationStore, source: Iterable[Item], done: set) -> bool:
    """Every clip of the source is stored and merged, in the source's order."""
    if store._unmerged_shards() or (hasattr(source, "__len__") and len(done) < len(source)):
        return False
    ids = [it.clip_id for it in source]
    if not set(ids) <= done:
        return False
    order = store._manifest.get("clip_order") or []
    return list(order[:len(ids)]) == ids


def _merge_in_order(store: ActivationStore, clip_ids: list[str]) -> ActivationStore:
    known = set(clip_ids)
    extra = sorted((c for c in store.done_clips() if c not in known), key=str)  # e.g. a shrunk source
    return ActivationStore.merge(store.path, order=clip_ids + extra)


def _finish(store: ActivationStore, clip_ids: list[str], world_size: int, rank: int,
            dist: Any) -> ActivationStore:
    if world_size == 1:
        return _merge_in_order(store, clip_ids)
    if dist is None:
        return store
    dist.barrier()  # every rank's shards are written
    merged = _merge_in_order(store, clip_ids) if rank == 0 else None
    dist.barrier()  # the manifest is merged
    return merged if merged is not None else store.reload()
