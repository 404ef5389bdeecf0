"""Wall time of every notebook, run one at a time as a user would, with its slowest cells.

    python benchmarks/notebook_times.py [--quick] [--full] [--cold] [--only 05 09] [--top 5] [--json PATH]
                                        [--keep DIR]
    python benchmarks/notebook_times.py --table [RESULTS.json]    # the markdown table of a run

Each notebook in ``notebooks/`` is executed with papermill on the ``mstools`` kernel, in order
(00 ... 09), one at a time, with the current working directory in a temporary folder. By default
the notebooks share that folder's ``outputs/`` as they do when run in order (activation stores and
the directions of notebook 04 are reused by later notebooks); ``--cold`` gives every notebook a
fresh folder instead (nothing reused). ``--quick`` sets ``MSTOOLS_TEST=1`` (the test suite's quick
mode); ``--full`` runs every notebook with ``FULL = True`` (the bigger run). The kernel imports
mstools from this checkout (it is put first on ``PYTHONPATH``) and runs torch on one thread
(``OMP_NUM_THREADS=1`` unless set), as ``setup`` does for the testbed. ``--keep DIR`` copies the
executed notebooks there (to read their outputs).

Recorded per notebook: wall time (kernel start included), the sum of cell times, the ``--top``
slowest cells (from papermill's per-cell ``duration``) and the 1-minute load average before and
after. Other work on the machine inflates the times: read them with the load beside them. Target:
every notebook <= 60 s in default mode on a 2-core CPU. Results go to
``benchmarks/results/notebook_times.json`` (``notebook_times_quick.json`` with ``--quick``,
``..._full`` with ``--full``, ``..._cold`` with ``--cold``); a run of some notebooks only (``--only``) writes nothing there, only
to ``--json PATH`` if given.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_threads, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "mstools"
TARGET_S = 60.0
RESULTS_JSON = ROOT / "benchmarks" / "results" / "notebook_times.json"


def kernel_env(quick: bool) -> dict[str, str]:
    """The environment the kernel inherits: this checkout first on PYTHONPATH, quick mode or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MSTOOLS_TEST", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    if quick:
        env["MSTOOLS_TEST"] = "1"
    return env


def first_line(source: str) -> str:
    """The first non-empty line of a cell, to name it in the table."""
    return next((line.strip() for line in source.splitlines() if line.strip()), "")[:90]


def run_one(path: Path, cwd: Path, env: dict[str, str], top: int, full: bool = False) -> dict:
    """Execute one notebook in a fresh process (papermill) and read its cell times back."""
    out = cwd / f"executed_{path.name}"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "papermill", str(path), str(out), "-k", KERNEL,
                           "--cwd", str(cwd), "--no-progress-bar", "--log-level", "WARNING",
                           *(["-p", "FULL", "True"] if full else [])],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    cells = []
    if out.exists():
        nb = json.loads(out.read_text())
        for i, c in enumerate(nb["cells"]):
            d = c.get("metadata", {}).get("papermill", {}).get("duration")
            if c["cell_type"] == "code" and d is not None:
                cells.append({"cell": i, "seconds": round(float(d), 2), "first_line": first_line("".join(c["source"]))})
    slowest = sorted(cells, key=lambda c: -c["seconds"])[:top]
    return {"notebook": path.stem, "ok": proc.returncode == 0, "wall_s": round(wall, 1),
            "cells_s": round(sum(c["seconds"] for c in cells), 1), "slowest_cells": slowest,
            "load_1min_before": round(load_before, 2), "load_1min_after": round(load_after, 2),
            "error": None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]}


def markdown_table(payload: dict) -> str:
    """The results as a markdown table: notebook, wall seconds, slowest cell, load before -> after."""
    lines = ["| notebook | seconds | slowest cell (seconds) | load (1 min) |", "|---|---:|---|---|"]
    for r in payload["notebooks"]:
        c = r["slowest_cells"][0] if r["slowest_cells"] else {"cell": "-", "seconds": 0.0, "first_line": ""}
        first = c["first_line"].replace("|", "\\|")
        lines.append(f"| `{r['notebook']}` | {r['wall_s']:.0f}{'' if r['ok'] else ' (failed)'} | "
                     f"[{c['cell']}] `{first[:60]}` ({c['seconds']:.1f}) | "
                     f"{r['load_1min_before']:.1f} -> {r['load_1min_after']:.1f} |")
    return "\n".join(lines)


def imported_from(env: dict[str, str], cwd: Path) -> str:
    """Where the kernel imports mstools from (must be this checkout)."""
    code = ("import json, jupyter_client; km, kc = jupyter_client.manager.start_new_kernel(kernel_name=%r); "
            "msgs = []; kc.execute_interactive('import mstools; print(mstools.__file__)', "
            "output_hook=lambda m: msgs.append(m)); km.shutdown_kernel(); "
            "print([m['content']['text'] for m in msgs if m['msg_type'] == 'stream'][0].strip())" % KERNEL)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"unknown ({proc.stderr[-200:]})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="MSTOOLS_TEST=1 (the test suite's quick mode)")
    p.add_argument("--full", action="store_true", help="FULL = True in every notebook (the bigger run)")
    p.add_argument("--keep", type=Path, default=None, help="copy the executed notebooks to this folder")
    p.add_argument("--cold", action="store_true", help="a fresh working folder per notebook (nothing reused)")
    p.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 05 09")
    p.add_argument("--top", type=int, default=5, help="slowest cells kept per notebook")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--table", type=Path, nargs="?", const=RESULTS_JSON, default=None,
                   help="print the markdown table of a results file (default: the last default-mode run) and exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0
    if args.quick and args.full:
        p.error("--quick and --full exclude each other (quick mode wins over FULL)")
    pin_threads(1)
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        paths = [q for q in paths if q.name[:2] in args.only]
    if not paths:
        p.error(f"no notebook matches --only {args.only}")
    env = kernel_env(args.quick)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nbtimes_") as tmp:
        shared = Path(tmp) / "run"
        shared.mkdir()
        where = imported_from(env, shared)
        print(f"kernel imports mstools from {where}", flush=True)
        for path in paths:
            cwd = Path(tempfile.mkdtemp(dir=tmp)) if args.cold else shared
            row = run_one(path, cwd, env, args.top, args.full)
            rows.append(row)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                done = cwd / f"executed_{path.name}"
                if done.exists():
                    shutil.copy(done, args.keep / path.name)
            cell = row["slowest_cells"][0] if row["slowest_cells"] else {"seconds": 0, "cell": "-"}
            print(f"{row['notebook']:28s} {'ok ' if row['ok'] else 'FAILED'} {row['wall_s']:7.1f} s  "
                  f"(cells {row['cells_s']:.1f} s, slowest cell [{cell['cell']}] {cell['seconds']:.1f} s)  "
                  f"load {row['load_1min_before']:.2f} -> {row['load_1min_after']:.2f}", flush=True)
            if not row["ok"]:
                print("   ", row["error"], flush=True)
    mode = "quick" if args.quick else "full" if args.full else "default"
    target = TARGET_S if mode == "default" else None
    payload = {"mode": mode, "reuse": "cold" if args.cold else "in order, shared outputs/",
               "kernel": KERNEL, "mstools_from": where, "torch_threads_env": env.get("OMP_NUM_THREADS"),
               "cpus": os.cpu_count(), "target_s": target, "notebooks": rows,
               "over_target": [] if target is None else [r["notebook"] for r in rows if r["wall_s"] > target]}
    if args.json:
        args.json.write_text(json.dumps({**payload, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    if not args.only:
        name = "notebook_times" + {"quick": "_quick", "full": "_full", "default": ""}[mode] + ("_cold" if args.cold else "")
        print(f"written to {write(name, payload)}")
    print(markdown_table(payload))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
