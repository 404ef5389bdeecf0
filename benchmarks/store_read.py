"""Cost of reading a store with its checks: ``store.features`` (every tensor checked against the
checksum written with it) against a plain read of the same shards (safetensors + gather, no checks).

    python benchmarks/store_read.py [--rows 2000] [--hooks 4] [--dim 1024] [--repeats 15]

Arms, interleaved: ``plain`` (safetensors ``get_tensor`` per shard and hook, rows gathered into
one tensor, no checks: how a store was read before checksums were added) and ``checked``
(``store.features(hook)`` for every hook). Target: checked <= 1.2x plain. Results go to
``benchmarks/results/store_read.json``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, pin_threads, summary, table, write  # noqa: E402

from mstools.data.store import ActivationStore  # noqa: E402


def build(path: Path, rows: int, hooks: int, dim: int) -> ActivationStore:
    names = [f"blocks.{l}.hook_resid_post" for l in range(hooks)]
    store = ActivationStore.create(path, fingerprint="bench", hooks={h: [dim] for h in names},
                                   pooling="mean", dtype=torch.float16)
    g = torch.Generator().manual_seed(0)
    with store.writer(shard_rows=1024) as w:
        for start in range(0, rows, 100):
            ids = list(range(start, min(rows, start + 100)))
            w.add(ids, {h: torch.randn(len(ids), dim, generator=g) for h in names},
                  [{"genre": "jazz"} for _ in ids])
    return ActivationStore.open(path)


def plain_read(store: ActivationStore) -> None:
    shard_of, row_of = store._locations()
    for h in store.hooks:
        out = torch.empty(len(store), *store.hook_shapes[h], dtype=torch.float32)
        for i, entry in enumerate(store.shards):
            where = (shard_of == i).nonzero().squeeze(1)
            with safe_open(str(store.path / entry["file"]), framework="pt") as f:
                t = f.get_tensor(h)
            out[where] = t[row_of[where]].float()


def checked_read(store: ActivationStore) -> None:
    for h in store.hooks:
        store.features(h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--hooks", type=int, default=4)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    pin_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = build(Path(tmp) / "s", args.rows, args.hooks, args.dim)
        store._locations()  # the index is read once per store object in both arms
        times = interleaved({"plain": lambda: plain_read(store), "checked": lambda: checked_read(store)},
                            repeats=args.repeats, warmup=2)
    rows = summary(times, "plain")
    print(table(rows, "plain"))
    print(f"checked / plain = {rows['checked']['ratio_vs_plain']:.3f} (target <= 1.2)")
    write("store_read", {"rows": args.rows, "hooks": args.hooks, "dim": args.dim, "dtype": "float16",
                         "results": rows})


if __name__ == "__main__":
    main()
