"""Run every benchmark in turn (``make bench``); each writes benchmarks/results/<name>.json.

    python benchmarks/run_all.py [--quick]

Take figures on an otherwise idle machine: the arms of each benchmark are interleaved, but other
work on the same cores still shifts the ratios. ``--quick`` runs the small-model variants only.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

FULL = [
    ["hook_overhead.py", "--scale", "small"],
    ["hook_overhead.py", "--scale", "small", "--backend", "transformers"],
    ["backend_speed.py", "--scale", "small"],
    ["backend_speed.py", "--scale", "testbed", "--seconds", "6", "--repeats", "5"],
    ["steering_cost.py", "--scale", "small"],
    ["probe_fit.py"],
    ["cache_throughput.py", "--clips", "512"],
    ["store_read.py"],
    ["thread_policy.py", "--small"],
    ["startup.py"],
    ["sae_memory.py"],
]
QUICK = [
    ["hook_overhead.py", "--scale", "tiny", "--seconds", "1"],
    ["hook_overhead.py", "--scale", "tiny", "--seconds", "1", "--backend", "transformers"],
    ["probe_fit.py", "--quick"],
    ["store_read.py", "--repeats", "5"],
    ["thread_policy.py", "--repeats", "3"],
    ["startup.py", "--repeats", "3"],
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models only (minutes, not an hour)")
    args = ap.parse_args(argv)
    failed = []
    for cmd in QUICK if args.quick else FULL:
        print(f"\n$ python benchmarks/{' '.join(cmd)}", flush=True)
        if subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]]) != 0:
            failed.append(" ".join(cmd))
    if failed:
        print("\nfailed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
