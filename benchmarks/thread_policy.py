"""The thread policy (mstools.core.threads), measured idle and beside a competing busy process.

    python benchmarks/thread_policy.py [--seconds 6] [--repeats 5] [--small]

Arms on the testbed (6 s of audio, interleaved): ``torch-2`` (the model told to leave torch alone,
torch at 2 threads: what a notebook got before the policy), ``auto`` (the policy: 1 thread for a small
model). Each arm runs idle and with a busy process spinning on one core (as on a student's laptop
with other work). Targets: ``auto`` under load <= 1.3x ``auto`` idle (the one-thread time); with
``--small``, musicgen-small size at 2 s: ``auto`` vs ``torch`` idle >= 0.95 (large models keep torch's
setting). Results go to ``benchmarks/results/thread_policy.json``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, model, summary, table, write  # noqa: E402

BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def arms(m, seconds: float) -> dict:
    def run(policy):
        def go():
            m.threads = policy
            m.generate(["fast rock with brass"] * 2, seconds, seed=0, decode=False)
        return go
    return {"torch-2": run(None), "auto": run("auto")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--small", action="store_true", help="also musicgen-small size (random weights, 2 s)")
    args = p.parse_args()
    torch.set_num_threads(2)
    tb = model("testbed")
    idle = summary(interleaved(arms(tb, args.seconds), args.repeats), "auto")
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        loaded = summary(interleaved(arms(tb, args.seconds), args.repeats), "auto")
    finally:
        busy.kill()
    base = idle["auto"]["median_s"]
    ratios = {"auto_loaded_vs_one_thread_idle": loaded["auto"]["median_s"] / base,
              "torch2_loaded_vs_one_thread_idle": loaded["torch-2"]["median_s"] / base,
              "torch2_idle_vs_one_thread_idle": idle["torch-2"]["median_s"] / base}
    print("## testbed, idle\n" + table(idle, "auto") + "\n\n## testbed, one core busy\n" + table(loaded, "auto"))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    out = {"seconds": args.seconds, "idle": idle, "loaded": loaded, "ratios": ratios,
           "targets": {"auto_loaded_vs_one_thread_idle": "<= 1.3"}}
    if args.small:
        small = model("small")
        res = summary(interleaved({"torch": lambda: (setattr(small, "threads", None),
                                                     small.generate(["jazz"], 2.0, seed=0, decode=False)),
                                   "auto": lambda: (setattr(small, "threads", "auto"),
                                                    small.generate(["jazz"], 2.0, seed=0, decode=False))},
                                  max(2, args.repeats // 2)), "torch")
        print("## musicgen-small size, idle\n" + table(res, "torch"))
        out["small"] = res
        out["ratios"]["small_auto_vs_torch"] = res["torch"]["median_s"] / res["auto"]["median_s"]
    print(f"written to {write('thread_policy', out)}")


if __name__ == "__main__":
    main()
