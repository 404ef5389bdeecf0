"""Start-up: a fresh process that imports mstools and loads the testbed.

    python benchmarks/startup.py [--repeats 5]

Arms, each a new Python process, interleaved: ``torch`` (``import torch``: the floor every arm
pays), ``import`` (``import mstools``), ``load`` (``import mstools; mstools.load_musicgen('testbed')``).
Target: ``load`` <= 4 s wall. Results go to ``benchmarks/results/startup.json``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, summary, table, write  # noqa: E402

CODE = {"torch": "import torch",
        "import": "import mstools",
        "load": "import mstools; mstools.load_musicgen('testbed')"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    arms = {k: (lambda c=c: subprocess.run([sys.executable, "-c", c], check=True)) for k, c in CODE.items()}
    rows = summary(interleaved(arms, args.repeats, warmup=1), "torch")
    print(table(rows, "torch"))
    print(f"load: {rows['load']['median_s']:.2f} s (target <= 4 s)")
    print(f"written to {write('startup', {'results': rows, 'target_load_s': 4.0})}")


if __name__ == "__main__":
    main()
