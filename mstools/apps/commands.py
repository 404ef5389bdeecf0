"""The ``cache`` and ``hooks`` commands and the argument parsers they share (see :mod:`mstools.apps.cli`)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
import torch.distributed as dist

from mstools.core.errors import BadInputError
from mstools.core.names import BACKENDS
from mstools.data.caching import DISTRIBUTED_TIMEOUT, cache_activations
from mstools.data.pooling import Pooling
from mstools.data.sources import audio_folder, generated_continuations, prompt_set, testbed_clips
from mstools.model.loading import MODEL_HELP, load_musicgen

__all__ = ["add_model_arguments", "make_model", "parse_source", "parse_pooling", "process_group",
           "configure_cache", "run_cache", "configure_hooks", "run_hooks"]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--backend``, ``--device``."""
    p.add_argument("--model", default="testbed", help=MODEL_HELP + " (default: testbed)")
    p.add_argument("--backend", default="audiocraft", choices=BACKENDS,
                   help="MusicGen implementation: audiocraft (audiocraft checkpoints) or "
                        "transformers (transformers checkpoints) (default: audiocraft)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK when available, else cpu)")


def make_model(name: str, device: str | None = None, backend: str = "audiocraft") -> Any:
    """A :class:`~mstools.model.hooked.HookedMusicGen` from ``--model``, ``--device`` and ``--backend``
    (see :func:`mstools.model.loading.load_musicgen`; the default device is ``cuda:LOCAL_RANK`` when
    a GPU is available, else ``cpu``).

    >>> make_model("random-tiny", "cpu", backend="transformers").backend_name
    'transformers'
    """
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    return load_musicgen(name, device=device, backend=backend)


# ----------------------------------------------------------------------------- cache

def _read_prompts(path: str) -> Any:
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"prompts file {file} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"prompts file {file} is not valid JSON: {err}") from None
    if isinstance(data, list) and all(isinstance(p, str) for p in data):
        return prompt_set(data)
    if isinstance(data, dict) and "templates" in data:
        unknown = set(data) - {"templates", "labels", "repeats"}
        if not unknown:
            return prompt_set(data["templates"], data.get("labels") or {}, int(data.get("repeats", 1)))
    raise ValueError(f"prompts file {file} must hold a list of prompts, e.g. [\"jazz\", \"rock\"], "
                     'or {"templates": ["{genre} music"], "labels": {"genre": ["jazz", "rock"]}, '
                     '"repeats": 2}')


def parse_source(spec: str, seed: int = 0, skip_unreadable: bool = False) -> Any:
    """A source from a ``--source`` value (see :mod:`mstools.apps.cli`).

    Example:
        >>> len(parse_source("testbed:4:1.0"))
        4
    """
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    usage = ("--source must be testbed:N[:SECONDS[:SEED]], prompts:FILE.json, audio:DIR[:CSV] or "
             f"continuations:DIR:SECONDS:FILE.json; got {spec!r}")

    def number(text: str, what: str, cast: Any, positive: bool = True) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise BadInputError(f"--source {spec}: {what} must be a number, got {text!r}") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise BadInputError(f"--source {spec}: {what} must be a positive number, got {text!r}")
        return value

    if kind == "testbed" and 1 <= len(parts) <= 3:
        n = number(parts[0], "N (clips)", int)
        seconds = number(parts[1], "SECONDS", float) if len(parts) > 1 else 3.0
        return testbed_clips(n, seconds, number(parts[2], "SEED", int, positive=False)
                             if len(parts) > 2 else seed)
    if kind == "prompts" and len(parts) == 1:
        return _read_prompts(parts[0])
    if kind == "audio" and 1 <= len(parts) <= 2:
        return audio_folder(parts[0], parts[1] if len(parts) > 1 else None, skip_unreadable=skip_unreadable)
    if kind == "continuations" and len(parts) == 3:
        return generated_continuations(audio_folder(parts[0], skip_unreadable=skip_unreadable),
                                       _read_prompts(parts[2]), number(parts[1], "SECONDS", float))
    raise BadInputError(usage)


def parse_pooling(spec: str) -> Any:
    """A :class:`~mstools.data.pooling.Pooling` from ``mean | last | frame | window:T0:T1``.

    >>> parse_pooling("window:0.5:2")
    Pooling(how='window', window=(0.5, 2.0))
    """
    how, _, rest = spec.partition(":")
    if how == "window":
        try:
            t0, t1 = (float(t) for t in rest.split(":"))
        except ValueError:
            raise BadInputError(f"--pooling window needs two times in seconds, window:T0:T1; "
                                f"got {spec!r}") from None
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise BadInputError(f"--pooling window times must be finite, got {spec!r}")
        return Pooling("window", (t0, t1))
    if rest:
        raise BadInputError(f"--pooling {how} takes no argument; got {spec!r}")
    try:
        return Pooling(how)
    except ValueError as err:
        raise BadInputError(f"--pooling {spec!r}: {err}") from None


def configure_cache(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--source", required=True,
                   help="testbed:N[:SECONDS[:SEED]] | prompts:FILE.json | audio:DIR[:CSV] | "
                        "continuations:DIR:SECONDS:FILE.json")
    p.add_argument("--out", required=True, help="store folder (created, or resumed)")
    p.add_argument("--hooks", default="blocks.*.hook_resid_post",
                   help="hook names or globs, comma-separated (default: blocks.*.hook_resid_post)")
    p.add_argument("--pooling", default="mean", help="mean | last | frame | window:T0:T1 (default: mean)")
    p.add_argument("--branches", default="cond", help="cond, uncond or cond,uncond (default: cond)")
    p.add_argument("--batch-size", type=int, default=8, help="items per batch (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds generated per prompt/continuation (audio prompt included); crop "
                        "of audio files (default: the model's duration / whole files)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="stored dtype (default: float16)")
    p.add_argument("--shard-rows", type=int, default=1024, help="rows per shard file (default: 1024)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="audio sources: leave out files that cannot be read (named in a warning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _distributed_env() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


@contextlib.contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """``(rank, world_size)``: a gloo process group under ``torchrun`` (RANK, WORLD_SIZE and
    MASTER_ADDR set), destroyed on exit; ``(0, 1)`` otherwise."""
    if not _distributed_env():
        yield 0, 1
        return
    dist.init_process_group("gloo", timeout=DISTRIBUTED_TIMEOUT)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def _check_out(out: str) -> None:
    """``--out`` must be a folder (or not exist yet)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder; name a folder for the store")


def run_cache(args: argparse.Namespace) -> int:
    """``python -m mstools cache``."""
    hooks = [h.strip() for h in args.hooks.split(",") if h.strip()]
    if not hooks:
        raise BadInputError(f"--hooks {args.hooks!r} names no hook; give names or globs, e.g. "
                            f"'blocks.*.hook_resid_post'")
    branches = [b.strip() for b in args.branches.split(",") if b.strip()]
    if not branches:
        raise BadInputError(f"--branches {args.branches!r} names no branch; use cond, uncond or cond,uncond")
    for name in ("batch_size", "shard_rows"):
        if getattr(args, name) < 1:
            raise BadInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise BadInputError(f"--duration must be a positive number of seconds, got {args.duration}")
    _check_out(args.out)
    pooling = parse_pooling(args.pooling)
    source = parse_source(args.source, seed=args.seed, skip_unreadable=args.skip_unreadable)
    with process_group() as (rank, world_size):
        model = make_model(args.model, args.device, args.backend)
        store = cache_activations(
            model, source, args.out, hooks if len(hooks) > 1 else hooks[0], pooling,
            batch_size=args.batch_size, branches=branches, duration=args.duration, seed=args.seed,
            dtype=getattr(torch, args.dtype), shard_rows=args.shard_rows,
            progress=not args.no_progress, rank=rank, world_size=world_size)
        if rank == 0:
            clips = store.labels["clip"].nunique() if len(store) else 0
            print(f"{store.path}: {len(store)} rows ({clips} clips x {len(store.branches)} "
                  f"branch(es)), {len(store.hooks)} hooks, pooling {args.pooling}, "
                  f"{world_size} process(es)")
    return 0


# ----------------------------------------------------------------------------- hooks

def configure_hooks(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--doc", action="store_true", help="add each hook's description")


def run_hooks(args: argparse.Namespace) -> int:
    """``python -m mstools hooks``."""
    model = make_model(args.model, args.device or "cpu", args.backend)
    columns = ["name", "layer", "module", "access", "shape"] + (["doc"] if args.doc else [])
    table = pd.DataFrame(model.describe_hooks())[columns]
    table["layer"] = table["layer"].map(lambda v: "" if v is None or v != v else int(v))
    print(repr(model))
    print(table.to_string(index=False))
    return 0


