"""Benchmark: peak memory of SAE training streamed from per-frame stores of two sizes.

    python benchmarks/sae_memory.py [STORE ...] [--hook blocks.3.hook_resid_post]
                                    [--width 384] [--k 16] [--rows N]

Without stores, two are made first in a temporary folder (4,250 and 17,000 testbed clips of 6 s,
per-frame pooling: about 255 k and 1.02 M rows), as with::

    python -m mstools cache --model testbed --source testbed:4250:6 --hooks 'blocks.*.hook_resid_post' \\
        --pooling frame --out /tmp/frames_255k
    python -m mstools cache --model testbed --source testbed:17000:6 --hooks 'blocks.*.hook_resid_post' \\
        --pooling frame --out /tmp/frames_1m

Each store is measured in a fresh subprocess (one thread): resident memory (VmRSS) after the
imports, after ``ActivationStore.open`` (which reads the manifest: configuration and shard list; the
labels table and the row index are separate files read when asked for), then the peak (``ru_maxrss``) after one epoch of
:func:`mstools.analysis.sae.train_sae` over every row through :class:`StoreBatches` (shuffle buffer
65,536 rows). ``training increment`` = peak - after open: what streaming adds; flat in the number
of rows when the shuffle buffer, not the store, bounds memory. Results go to
``benchmarks/results/sae_memory.json`` and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
path, hook, width, k, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
from mstools.data.store import ActivationStore
from mstools.analysis.sae import StoreBatches, train_sae
out = {"after_import_mb": rss()}
t = time.perf_counter()
store = ActivationStore.open(path)
out["open_s"] = time.perf_counter() - t
out["after_open_mb"] = rss()
out["rows"] = len(store) if rows == "all" else min(int(rows), len(store))
out["manifest_mb"] = (store.path / "manifest.json").stat().st_size / 2**20
t = time.perf_counter()
sae, log = train_sae(StoreBatches(store, hook, limit=out["rows"]), hook=hook,
                     fingerprint=store.fingerprint, width=width, k=k, epochs=1)
out["train_s"] = time.perf_counter() - t
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["final_fvu"] = float(log["fvu"].iloc[-1])
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="*")
    ap.add_argument("--hook", default="blocks.3.hook_resid_post")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rows", default="all", help="rows read per store (default: all)")
    args = ap.parse_args()
    tmp = None
    if not args.stores:
        import tempfile
        tmp = tempfile.TemporaryDirectory()
        for n, name in ((4250, "frames_255k"), (17000, "frames_1m")):
            out = Path(tmp.name) / name
            subprocess.run([sys.executable, "-m", "mstools", "cache", "--model", "testbed", "--source",
                            f"testbed:{n}:6", "--hooks", args.hook, "--pooling", "frame",
                            "--batch-size", "64", "--no-progress", "--out", str(out)], check=True)
            args.stores.append(str(out))
    results = []
    for path in args.stores:
        proc = subprocess.run([sys.executable, "-c", CHILD, path, args.hook, str(args.width),
                               str(args.k), args.rows], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["store"] = path
        r["training_increment_mb"] = r["peak_mb"] - r["after_open_mb"]
        results.append(r)
    print("| store | rows | manifest MB | RSS after import | after open | peak | training increment "
          "| train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['store']} | {r['rows']:,} | {r['manifest_mb']:.0f} | {r['after_import_mb']:.0f} MB "
              f"| {r['after_open_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
              f"{r['training_increment_mb']:.0f} MB | {r['train_s']:.1f} |")
    write("sae_memory", {"hook": args.hook, "width": args.width, "k": args.k, "results": results})
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
