"""The README's measured figures are rendered from results files (experiments/readme_figures.py):
the committed README matches them, and the renderers quote what the runs wrote."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import readme_figures  # noqa: E402


def test_every_block_of_the_readme_matches_its_results_file():
    text = readme_figures.README.read_text()
    for name in readme_figures.BLOCKS:
        assert f"<!-- figures:{name} -->" in text, f"README lacks the {name} block"
    assert readme_figures.stale_blocks(text) == [], "run python experiments/readme_figures.py"


def test_render_replaces_only_the_marked_blocks():
    text = "intro 0.99\n<!-- figures:bench -->\nold\n<!-- /figures:bench -->\noutro"
    out = readme_figures.render_readme(text)
    assert out.startswith("intro 0.99\n<!-- figures:bench -->\n") and out.endswith("\n<!-- /figures:bench -->\noutro")
    assert "old" not in out and readme_figures.stale_blocks(out) == [n for n in readme_figures.BLOCKS if n != "bench"]


def test_bench_block_quotes_the_results_files(tmp_path, monkeypatch):
    """Each results file gives its row, with its ratio read from the file (not retyped)."""
    def put(name, obj):
        (tmp_path / f"{name}.json").write_text(json.dumps({**obj, "when": "2026-01-01 10:00:00",
                                                            "machine": {"load_1min": 0.25}}))
    put("cache_throughput", {"clips": 64, "ratio": 0.8765, "target": 0.9})
    put("startup", {"results": {k: {"median_s": v} for k, v in (("torch", 1.25), ("import", 2.5), ("load", 6.75))},
                    "target_load_s": 4.0})
    put("thread_policy", {"ratios": {"auto_loaded_vs_one_thread_idle": 1.0449,
                                     "torch2_loaded_vs_one_thread_idle": 10.5},
                          "targets": {"auto_loaded_vs_one_thread_idle": "<= 1.3"}})
    monkeypatch.setattr(readme_figures, "BENCH", tmp_path)
    block = readme_figures.render_bench()
    rows = block.splitlines()[2:]
    assert len(rows) == 3
    assert "| 0.88x | >= 0.9x | 2026-01-01 10:00 (load 0.2) |" in rows[0]
    assert "1.04x (torch's 2 threads: 10.5x) | <= 1.3x" in rows[1]
    assert "1.2 s / 2.5 s / 6.8 s | <= 4 s (load)" in rows[2]


def test_demo_block_quotes_a_demo_run(tmp_path, monkeypatch):
    """On a small results file laid out as ``run_demo`` writes it, the probe rows are the per-layer
    means of the records (computed here independently) and the reading is quoted verbatim."""
    probes = []
    for text, bonus in (("null", 0.0), ("prompt", 0.05)):
        for model, base in (("trained", 0.9), ("untrained", 0.5)):
            for layer in range(3):
                for control, shift in (("none", 0.0), ("shuffled", -0.3)):
                    for target in readme_figures.FACTORS:
                        probes.append(dict(text=text, model=model, layer=layer, control=control,
                                           method="logistic", target=target,
                                           accuracy_mean=base + bonus + 0.01 * layer + shift))
    steering = [dict(method=m, strength=0.5, success=s, base_rate=0.25, random_mean=0.2, random_max=0.3,
                     ll_drop=0.1, ll_drop_prompted=0.02) for m, s in (("diff_means", 0.7), ("logistic", 0.9))]
    (tmp_path / "demo.json").write_text(json.dumps(dict(
        minutes=1.0, quick=True, genre_hook="blocks.1.hook_resid_post", probes=probes,
        steering=steering, reading=["Genre is read best at layer 2."])))
    monkeypatch.setattr(readme_figures, "RESULTS", tmp_path)
    block = readme_figures.render_demo()
    df = pd.DataFrame(probes).query("target == 'genre' and control == 'none'")
    for layer in range(3):
        cells = []
        for text in ("null", "prompt"):
            d = df[(df.text == text) & (df.layer == layer)]
            tr, un = d[d.model == "trained"].accuracy_mean.mean(), d[d.model == "untrained"].accuracy_mean.mean()
            cells += [f"{tr:.2f}", f"{un:.2f}", f"{tr - un:.2f}"]
        assert f"| {layer} | " + " | ".join(cells) + " |" in block
    assert "| logistic | 0.5 | **0.90** |" in block and "> Genre is read best at layer 2." in block
