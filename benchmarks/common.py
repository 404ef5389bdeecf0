"""Shared benchmark helpers: interleaved timing, thread pinning, results files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"


def pin_threads(n: int) -> None:
    torch.set_num_threads(n)


def interleaved(arms: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each arm ``repeats`` times, alternating arms (ABCABC...) so drift hits all alike."""
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def summary(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    base = statistics.median(times[baseline])
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "runs": len(v),
                "ratio_vs_" + baseline: statistics.median(v) / base} for k, v in times.items()}


def model(scale: str, backend: str = "audiocraft"):
    """The model a benchmark runs: ``"testbed"`` (trained, embedded) or a random build at ``scale``."""
    import mstools
    if scale == "testbed":
        return mstools.load_musicgen("testbed", device="cpu", backend=backend)
    return mstools.build_musicgen(scale, seed=0, backend=backend)


def machine() -> dict[str, object]:
    """Versions, threads and the machine's 1-minute load average when the result was written (the
    benchmark itself adds about its thread count; a load well above that means other work competed)."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_1min": round(os.getloadavg()[0], 2)}


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**payload, "machine": machine(),
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    os.replace(tmp, path)
    return path


def table(rows: dict[str, dict[str, float]], baseline: str) -> str:
    key = "ratio_vs_" + baseline
    lines = [f"| arm | median (s) | min (s) | ratio vs {baseline} |", "|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v[key]:.3f} |")
    return "\n".join(lines)
