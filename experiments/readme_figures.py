"""The README's measured figures, rendered from the results files that the runs write.

    python experiments/readme_figures.py           # rewrite the marked blocks of README.md
    python experiments/readme_figures.py --check   # exit 1 if a block differs from its results

Every number the README quotes about the testbed, the main job, the findings and the benchmarks
sits in a block between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``, rendered here from:

=============  ==========================================================================
block          results file (written by)
=============  ==========================================================================
``testbed``    ``mstools/testbed/weights/manifest.json`` (``python -m mstools.testbed.train``,
               ``python experiments/evaluate_testbed.py``)
``demo``       ``experiments/results/demo.json`` (``make demo`` writes ``outputs/results.json``;
               ``make figures`` copies it)
``findings``   ``experiments/results/findings.csv`` (``python experiments/findings.py``)
``export``     ``experiments/results/export.json`` (``python -m mstools export``'s check)
``bench``      ``benchmarks/results/*.json`` (``make bench``)
=============  ==========================================================================

``tests/test_readme_figures.py`` runs ``--check``, so text and results cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from mstools.core.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "experiments" / "results"
MANIFEST = ROOT / "mstools" / "testbed" / "weights" / "manifest.json"
BENCH = ROOT / "benchmarks" / "results"
FACTORS = ("genre", "tempo", "instrument", "dynamics")


def _f(x: float, d: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _interval(row: pd.Series | dict, key: str = "success") -> str:
    return f"{_f(row[key])} ({_f(row[key + '_lo'])}-{_f(row[key + '_hi'])})"


# ------------------------------------------------------------------------------------------ testbed
def _wrong(p: float | dict) -> str:
    if isinstance(p, dict):
        return ", ".join(f"{v:g} ({k})" for k, v in p.items())
    return f"{p:g}"


def render_testbed() -> str:
    m = json.loads(MANIFEST.read_text())
    c, t, ev = m["config"], m["training"], m.get("evaluation")
    lines = [
        f"- Model: audiocraft `LMModel`, {c['num_layers']} layers x {c['dim']} dims, {c['num_heads']} "
        f"heads, {c['n_q']} codebooks of {c['card']} tokens, delay pattern, classifier-free guidance "
        f"(coefficient {c['generation']['cfg_coef']:g}); text encoder: a transformers `T5EncoderModel` "
        f"({c['text']['num_layers']} blocks, d_model {c['text']['d_model']}) with a word-level "
        f"tokenizer, prompts padded to {c['text']['slots']} slots. {m['parameters']:,} parameters, "
        f"{m['bytes'] / 2**20:.1f} MB of float32 safetensors (+ the text encoder folder).",
        f"- Training (`python -m mstools.testbed.train`): {t['steps_done']:,} steps of batch "
        f"{t['batch']} ({t['training_seconds'] / 60:.0f} min on {t['threads']} CPU thread); captions "
        f"name each factor with probability {t['recipe']['mention_prob']:g}, name a wrong value with "
        f"probability {_wrong(t['recipe']['wrong_prob'])}, are empty {t['recipe']['cfg_dropout']:.0%} of the "
        f"time; {t['recipe']['switch_prob']:.0%} of prompted clips ({t['recipe']['switch_prob_null']:.0%} "
        f"of unprompted ones) change a factor mid-clip. Validation loss {m['metrics']['val_loss']:.3f} "
        f"nats per token.",
    ]
    if not ev:
        return "\n".join(lines + ["- (not evaluated yet: run `python experiments/evaluate_testbed.py`)"])
    tr, un = ev["trained"], ev["untrained"]
    ad, seg = tr["full_prompt_adherence"], tr["full_prompt_adherence_1s_segments"]
    pad = ev.get("padding", {})
    lines += [
        "",
        f"Prompt adherence (`python experiments/evaluate_testbed.py`: {tr['repeats']} seeds x 64 prompts "
        f"naming all four factors, {tr['seconds']:g} s clips; labels read by the grammar):",
        "",
        "| | " + " | ".join(FACTORS) + " |",
        "|---|" + "---|" * len(FACTORS),
        "| whole clip | " + " | ".join(_f(ad[f]) for f in FACTORS) + " |",
        "| per 1 s segment | " + " | ".join(_f(seg[f]) for f in FACTORS) + " |",
        "| untrained model, whole clip | " + " | ".join(_f(un["full_prompt_adherence"][f]) for f in FACTORS) + " |",
        "",
        f"Genre-only prompts (\"rock\", ...): {_f(tr['genre_only_adherence'])} (untrained "
        f"{_f(un['genre_only_adherence'])}). Grammar log-likelihood per frame: full prompts "
        f"{_f(tr['full_prompt_quality']['loglik_mean'])}, genre-only "
        f"{_f(tr['genre_only_quality']['loglik_mean'])}, unconditional "
        f"{_f(tr['unconditional_quality']['loglik_mean'])}; fresh procedural clips "
        f"{_f(ev['procedural']['loglik_mean'])}; the untrained model "
        f"{_f(un['full_prompt_quality']['loglik_mean'], 1)}.",
    ]
    if pad:
        tf = pad["teacher_forced"]
        lines += [
            "",
            f"Two ways to read a prompt: audiocraft's fixed, unmasked slots (mstools, both backends) "
            f"vs transformers' masked padding (the exported folder's processor): full-prompt "
            f"adherence {', '.join(_f(pad['audiocraft_fixed_slots']['full_prompt_adherence'][f]) for f in FACTORS)} "
            f"vs {', '.join(_f(pad['transformers_masked']['full_prompt_adherence'][f]) for f in FACTORS)} "
            f"(genre, tempo, instrument, dynamics); next-token KL between the two readings "
            f"{tf['kl_fixed_vs_masked']:.4f} nats, against {tf['kl_prompt_vs_null']:.3f} between a "
            f"prompt and the null text.",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- demo
def render_demo() -> str:
    path = RESULTS / "demo.json"
    if not path.exists():
        return "(no results yet: run `make figures`)"
    r = json.loads(path.read_text())
    probes = pd.DataFrame(r["probes"])
    g = probes.query("target == 'genre' and method == 'logistic'")
    piv = g.pivot_table(index="layer", columns=["text", "model", "control"], values="accuracy_mean")
    lines = [f"Measured by `make demo` ({r['minutes']:.1f} min, audiocraft backend, "
             f"{'quick' if r['quick'] else 'full'} mode). Genre, logistic probe on mean-pooled "
             f"`resid_post` (held-out accuracy, clips split by clip, mean over seeds); clips read with "
             f"the null text (only the audio tells the genre) and with their prompts (which name the "
             f"genre in most clips):", "",
             "| layer | null text: trained | untrained (same shape) | selectivity | prompts: trained | untrained | selectivity | shuffled labels |",
             "|---|---|---|---|---|---|---|---|"]
    for layer, row in piv.iterrows():
        cells = []
        for text in ("null", "prompt"):
            tr, un = row[(text, "trained", "none")], row[(text, "untrained", "none")]
            cells += [_f(tr), _f(un), _f(tr - un)]
        lines.append(f"| {int(layer)} | " + " | ".join(cells) + f" | {_f(row[('null', 'trained', 'shuffled')])} |")
    null = probes.query("text == 'null' and control == 'none' and method == 'logistic'")
    best = (null[null.model == "trained"].sort_values(["accuracy_mean", "layer"], ascending=[False, True])
            .groupby("target").head(1).set_index("target"))
    unt = null[null.model == "untrained"]
    lines += ["", "Best layer per factor, null text (trained; the untrained model at the same layer): " + "; ".join(
        f"{t} {_f(best.loc[t, 'accuracy_mean'])} at layer {int(best.loc[t, 'layer'])} "
        f"({_f(float(unt[(unt.target == t) & (unt.layer == best.loc[t, 'layer'])]['accuracy_mean'].iloc[0]))})"
        for t in FACTORS if t in best.index) + "."]
    s = pd.DataFrame(r["steering"])
    by = s.groupby(["method", "strength"], as_index=False).agg(
        success=("success", "mean"), base=("base_rate", "mean"), random=("random_mean", "mean"),
        random_max=("random_max", "max"), ll_drop=("ll_drop", "mean"), prompted=("ll_drop_prompted", "mean"))
    lines += ["", f"Steering at `{r['genre_hook']}` (unconditional clips, 0-2 s pulse, both branches, "
              f"four target genres; mean over targets):", "",
              "| direction | strength | success | unsteered twins on target | random (highest draw) | loglik drop (prompting the genre) |",
              "|---|---|---|---|---|---|"]
    for _, row in by.iterrows():
        lines.append(f"| {row['method']} | {row['strength']:g} | **{_f(row['success'])}** | {_f(row['base'])} | "
                     f"{_f(row['random'])} ({_f(row['random_max'])}) | {_f(row['ll_drop'])} ({_f(row['prompted'])}) |")
    lines += ["", "What the run says (computed by the demo from its own numbers):", ""]
    lines += [f"> {line}" for line in r["reading"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- findings
def _best(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    df = df.sort_values("success", ascending=False)
    return df.groupby(by, as_index=False).head(1) if by else df.head(1)


def render_findings() -> str:
    path = RESULTS / "findings.csv"
    if not path.exists():
        return "(no results yet: run `python experiments/findings.py`)"
    s = pd.read_csv(path)
    s = s[s["segment"].isna() | (s["segment"].astype(str).isin(["all", "nan"]))] if "segment" in s else s
    lines = ["| experiment | setting | success (95 % interval) | unsteered twins | random: mean (highest) | loglik drop (prompting the target) |",
             "|---|---|---|---|---|---|"]

    def row(exp: str, r: pd.Series, label: str | None = None) -> None:
        lines.append(f"| {exp} | {label or r['trial']} | {_interval(r)} | {_f(r['base_rate'])} | "
                     f"{_f(r['random_mean'])} ({_f(r['random_max'])}) | {_f(r['ll_drop'])} ({_f(r['ll_drop_prompted'])}) |")

    m = s[s.experiment == "methods"]
    if len(m):
        g = m.groupby(["method", "layer"], as_index=False).agg(
            success=("success", "mean"), random_max=("random_max", "max"), base_rate=("base_rate", "mean"),
            random_mean=("random_mean", "mean"), ll_drop=("ll_drop", "mean"), ll_drop_prompted=("ll_drop_prompted", "mean"))
        for method, part in g.groupby("method"):
            top = part.sort_values("success", ascending=False).iloc[0]
            lines.append(f"| methods | {method}, best layer {int(top['layer'])} (mean over targets) | "
                         f"{_f(top['success'])} | {_f(top['base_rate'])} | {_f(top['random_mean'])} "
                         f"({_f(top['random_max'])}) | {_f(top['ll_drop'])} ({_f(top['ll_drop_prompted'])}) |")
    for exp in ("hooks", "branch", "timbre"):
        e = s[s.experiment == exp]
        key = {"hooks": "kind", "branch": "prompts", "timbre": "prompts"}[exp]
        if len(e) and key in e:
            for _, r in _best(e, [key]).iterrows():
                row(exp, r, f"{r[key]}: {r['trial']}")
    p = s[s.experiment == "prompted"]
    if len(p):
        for factor, part in p.groupby("factor", sort=False):
            ok = part[part["meets"].astype(str) == "True"]
            top = (ok if len(ok) else part).sort_values("success", ascending=False).iloc[0]
            row("prompted", top, f"{top['trial']} ({'meets' if len(ok) else 'best; none meets'} the bar)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ export
def render_export() -> str:
    path = RESULTS / "export.json"
    if not path.exists():
        return "(no results yet: run `make figures`)"
    c = json.loads(path.read_text())["check"]
    return "\n".join([
        "| measure | value |", "|---|---|",
        f"| decoder under mstools' condition vs audiocraft, largest logit difference | {c['decoder_logit_gap']:.1e} |",
        f"| no prompt (transformers' null condition), largest logit difference | {c['unconditional_logit_gap']:.1e} |",
        f"| processor's masked reading vs mstools' reading: mean next-token KL | {c['processor_kl']:.1e} nats |",
        f"| ... positions whose most likely token agrees | {c['processor_argmax_agreement']:.1%} |",
        f"| EnCodec decode vs `SynthCodec`, grammar clips / random tokens | {c['decoder_snr_db_grammar']:.1f} dB / {c['decoder_snr_db_random']:.1f} dB SNR |",
        f"| EnCodec encode of synth renders, tokens read back per codebook (grammar clips) | {', '.join(f'{v:.1%}' for v in c['encode_accuracy_grammar'])} |",
        f"| ... (random tokens) | {', '.join(f'{v:.1%}' for v in c['encode_accuracy_random'])} |",
        f"| clips, seconds, time to check | {c['clips']}, {c['seconds']:g} s, {c['seconds_taken']:g} s |",
    ])


# ------------------------------------------------------------------------------------------- bench
def _load(name: str) -> dict | None:
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _when(r: dict) -> str:
    load = r.get("machine", {}).get("load_1min")
    return f"{r.get('when', '')[:16]}" + (f" (load {load:.1f})" if isinstance(load, (int, float)) else "")


def _x(v: float, d: int = 2) -> str:
    return f"{v:.{d}f}x"


def _bench_rows() -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, target, when) for every results file present."""
    rows = []
    if r := _load("hook_overhead_small"):
        a = r["results"]
        rows.append(("hook overhead, musicgen-small size, 2 s, audiocraft", f"no hooks {_x(a['hooked']['ratio_vs_plain'], 3)}, "
                     f"identity hook on every `resid_post` {_x(a['identity']['ratio_vs_plain'], 3)}, caching every "
                     f"`resid_post` {_x(a['cache']['ratio_vs_plain'], 3)} (plain audiocraft {a['plain']['median_s']:.1f} s)",
                     "<= 1.02x, 1.05x, 1.15x", _when(r)))
    if r := _load("hook_overhead_small_transformers"):
        a = r["results"]
        rows.append(("... transformers backend (against `MusicgenForConditionalGeneration.generate`)",
                     f"no hooks {_x(a['hooked']['ratio_vs_plain'], 3)}, identity {_x(a['identity']['ratio_vs_plain'], 3)}, "
                     f"caching {_x(a['cache']['ratio_vs_plain'], 3)} (plain {a['plain']['median_s']:.1f} s)",
                     "<= 1.02x, 1.05x, 1.15x", _when(r)))
    for scale in ("small", "testbed"):
        if r := _load(f"backend_speed_{scale}"):
            g, f = r["generate"], r["forward"]
            rows.append((f"transformers vs audiocraft, one set of weights, {scale}",
                         f"generate {_x(g['transformers_generate']['ratio_vs_audiocraft_generate'])} audiocraft's time "
                         f"(steered {_x(g['transformers_steered']['median_s'] / g['audiocraft_steered']['median_s'])}), "
                         f"teacher-forced forward {_x(f['transformers_forward']['ratio_vs_audiocraft_forward'])}",
                         "(recorded)", _when(r)))
    if r := _load("steering_cost"):
        rows.append(("one steering vector on one layer, musicgen-small size",
                     _x(r["one_vector"]["results"]["one_vector"]["ratio_vs_none"], 3) + " the unsteered time",
                     f"<= {r['one_vector']['target']:g}x", _when(r)))
        rows.append(("8 settings x 4 prompts in one batch vs 8 generates, testbed",
                     f"{r['sweep']['speedup']:.1f}x faster", f">= {r['sweep']['target']:g}x", _when(r)))
    if r := _load("probe_fit"):
        for name, d in r["datasets"].items():
            q, sh = d["ratios"], d["shape"]
            rows.append((f"probes, {sh['L']} layers x {sh['D']} dims, {sh['K']} classes, {sh['N']:,} {name} examples, 1 thread",
                         f"ridge {q['sklearn / ridge']:.1f}x faster than a scikit-learn logistic loop, "
                         f"{q['seed_as_written / ridge']:.0f}x than the seed recipe, {q['ridge / gram_floor']:.1f}x the Gram "
                         f"floor; logistic {q['sklearn / logistic']:.2f}x scikit-learn's speed at accuracy "
                         f"{q['accuracy: logistic - sklearn']:+.3f}", "ridge >= 10x seed, logistic >= 2x sklearn", _when(r)))
    if r := _load("cache_throughput"):
        rows.append((f"caching throughput vs a bare forward, testbed, {r['clips']} clips x 6 s",
                     _x(r["ratio"]), f">= {r['target']:g}x", _when(r)))
    if r := _load("store_read"):
        a = r["results"]
        rows.append((f"store read with checksums vs without, {r['rows']:,} rows x {r['hooks']} hooks",
                     _x(a["checked"]["ratio_vs_plain"]), "(recorded)", _when(r)))
    if r := _load("thread_policy"):
        q = r["ratios"]
        rows.append(("testbed, 6 s generate beside a busy process: thread policy vs one thread idle",
                     f"{_x(q['auto_loaded_vs_one_thread_idle'])} (torch's 2 threads: {q['torch2_loaded_vs_one_thread_idle']:.1f}x)",
                     r["targets"]["auto_loaded_vs_one_thread_idle"] + "x", _when(r)))
        if "small_auto_vs_torch" in q:
            rows.append(("... musicgen-small size, 2 s, idle: speed of the policy vs torch's setting",
                         _x(q["small_auto_vs_torch"]),
                         ">= 0.95x", _when(r)))
    if r := _load("startup"):
        a = r["results"]
        rows.append(("fresh process: `import torch` / `import mstools` / + `load_musicgen('testbed')`",
                     f"{a['torch']['median_s']:.1f} s / {a['import']['median_s']:.1f} s / {a['load']['median_s']:.1f} s",
                     f"<= {r['target_load_s']:g} s (load)", _when(r)))
    if r := _load("sae_memory"):
        big = max(r["results"], key=lambda x: x["rows"])
        rows.append((f"sparse autoencoder from a per-frame store, {big['rows']:,} rows", f"training adds "
                     f"{big['training_increment_mb']:.0f} MB (peak {big['peak_mb']:.0f} MB), "
                     f"{big['train_s']:.1f} s", "flat in rows", _when(r)))
    if r := _load("notebook_times"):
        worst = max(r["notebooks"], key=lambda x: x["wall_s"])
        rows.append(("every notebook in default mode, in order", f"slowest {worst['notebook']} {worst['wall_s']:.0f} s; "
                     f"over the target: {', '.join(r['over_target']) or 'none'}", f"<= {r['target_s']:g} s each", _when(r)))
    return rows


def render_bench() -> str:
    lines = ["| benchmark | measured (ratios from interleaved arms) | target | when (1-min load) |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _bench_rows()]
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {"testbed": render_testbed, "demo": render_demo,
                                        "findings": render_findings, "export": render_export,
                                        "bench": render_bench}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- figures:{name} -->\n)(.*?)(<!-- /figures:{name} -->)", re.S)


def render_readme(text: str) -> str:
    """``text`` with every marked block re-rendered."""
    for name, fn in BLOCKS.items():
        text = _pattern(name).sub(lambda m, body=fn(): m.group(1) + body + "\n" + m.group(3), text)
    return text


def stale_blocks(text: str) -> list[str]:
    """Names of the blocks whose text differs from their results (or that are missing)."""
    out = []
    for name, fn in BLOCKS.items():
        m = _pattern(name).search(text)
        if m is None or m.group(2) != fn() + "\n":
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a block is stale")
    args = p.parse_args(argv)
    text = README.read_text()
    if args.check:
        stale = stale_blocks(text)
        if stale:
            print(f"stale README blocks: {stale}; run python experiments/readme_figures.py", file=sys.stderr)
            return 1
        print("README figures match their results files")
        return 0
    atomic_write_text(README, render_readme(text))
    print(f"rewrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
