"""Caching throughput vs a plain teacher-forced forward pass (target >= 0.9x).

    python benchmarks/cache_throughput.py [--model testbed] [--clips 256] [--seconds 6] [--repeats 3]

Arms (interleaved, the same clips held in memory, same batches):
  forward   the model's teacher-forced forward on every batch, nothing kept
  cache     ``mstools.data.caching.cache_activations``: the same forward with every ``resid_post`` hooked,
            mean-pooled and written to an activation store on disk (float16 shards)
Throughput = clips per second; the ratio is cache / forward.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, pin_threads, summary, write  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    import mstools
    from mstools.data.caching import cache_activations
    from mstools.data.pooling import Pooling
    from mstools.data.sources import testbed_clips
    model = mstools.load_musicgen(args.model, device="cpu")
    items = list(testbed_clips(args.clips, seconds=args.seconds, seed=0))  # both arms: the same clips in memory
    hooks = "blocks.*.hook_resid_post"

    def forward():
        for i in range(0, len(items), args.batch_size):
            batch = items[i:i + args.batch_size]
            codes = torch.stack([it.codes for it in batch])
            model(codes, [it.prompt for it in batch])

    def cache():
        tmp = tempfile.mkdtemp()
        try:
            cache_activations(model, items, Path(tmp) / "store", hooks, Pooling("mean"),
                              batch_size=args.batch_size, progress=False)
        finally:
            shutil.rmtree(tmp)

    rows = summary(interleaved({"forward": forward, "cache": cache}, repeats=args.repeats), "forward")
    thr = {k: args.clips / v["median_s"] for k, v in rows.items()}
    ratio = thr["cache"] / thr["forward"]
    print(f"## caching throughput, {args.model}, {args.clips} clips x {args.seconds:g} s\n")
    print("| arm | median (s) | clips/s |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v['median_s']:.3f} | {thr[k]:.0f} |")
    print(f"\nthroughput ratio cache/forward: {ratio:.2f} (target >= 0.9)")
    path = write("cache_throughput", {"model": args.model, "clips": args.clips,
                                      "results": rows, "clips_per_s": thr, "ratio": ratio,
                                      "target": 0.9})
    print(f"written to {path}")
    return {"ratio": ratio}


if __name__ == "__main__":
    main()
