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
``patching``   ``experiments/results/patching_sae.json`` (``python experiments/patching_sae.py``)
``features``   ``experiments/results/patching_sae.json`` (the same run)
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
    # experiments with one segment per trial (window and fusion score several segments; not quoted here)
    s = s[s["experiment"].isin(["methods", "hooks", "branch", "timbre", "prompted"])]
    m0 = s[s.experiment == "methods"]
    layers = sorted({int(x) for x in m0["layer"].dropna()}) if "layer" in s and len(m0) else []
    n = sorted({int(x) for x in s["n"].dropna()}) if "n" in s else []
    lines = [f"Layers {', '.join(map(str, layers)) or 'n/a'}; {'-'.join(map(str, n[::max(1, len(n) - 1)])) or 'n/a'} "
             f"clips per row (steered, each with its unsteered twin; every random draw on the same clips).", "",
             "| experiment | setting | success (95 % interval) | unsteered twins | random: mean (highest) | loglik drop (prompting the target) |",
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
                row(exp, r, r["trial"] if exp == "hooks" else f"{r[key]} prompts: {r['trial']}")
    p = s[s.experiment == "prompted"]
    if len(p):
        for factor, part in p.groupby("factor", sort=False):
            ok = part[part["meets"].astype(str) == "True"]
            top = (ok if len(ok) else part).sort_values("success", ascending=False).iloc[0]
            row("prompted", top, f"{top['trial']} ({'meets' if len(ok) else 'best; none meets'} the bar)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- patching, features
def _patching_sae() -> dict | None:
    path = RESULTS / "patching_sae.json"
    return json.loads(path.read_text()) if path.exists() else None


def _layers(ls: list) -> str:
    return "none" if not ls else ", ".join(str(x) for x in ls)


def render_patching() -> str:
    r = _patching_sae()
    if r is None:
        return "(no results yet: run `python experiments/patching_sae.py`)"
    p, g = r["patching"], r["patching"]["generative"]
    fd, rows = p["finding"], p["layers"]
    w = p["window"]
    lines = [f"Measured by `python experiments/patching_sae.py` ({r['seconds'] / 60:.1f} min, "
             f"{'quick' if r['quick'] else 'full'} mode; notebook 08's calls). {p['clips']} {p['clean']} clips "
             f"read with the prompt \"{p['clean']}\" (clean) and \"{p['corrupted']}\" (corrupted): "
             f"{p['logprob_clean']:.3f} vs {p['logprob_corrupted']:.3f} nats per token; a teacher-forced cell "
             f"is the share of that gap the patch restores (0 = corrupted run, 1 = clean run). Generative: "
             f"the first {g['first']:g} s of one layer's residual stream copied while generating from "
             f"\"{p['corrupted']}\", the genre read by the grammar afterwards ({g['clips']} clips; "
             f"{_f(g['hit_clean'])} of the clean run's clips and {_f(g['hit_corrupted'])} of the corrupted "
             f"run's play {p['clean']}; 0 and 1 as above). Probe: logistic on mean-pooled activations of "
             f"{p['probe_clips']} clips, held-out accuracy (split by clip); steering: difference of class means toward {p['clean']}, 0.5 x mean "
             f"norm, both branches, {p['steer_prompts']} unconditional prompts (unsteered twins "
             f"{_f(p['steering_base_rate'])}).", "",
             f"| layer | `resid_post`, whole clip | first {w:g} s only | any later {w:g} s window (highest) "
             f"| `cross_attn_out`, whole clip | generative, first {g['first']:g} s | probe accuracy | steering success |",
             "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['layer']} | **{_f(x['resid_post'])}** | {_f(x['first_window'])} | {_f(x['later_max'], 3)} | "
                     f"{_f(x['cross_attn_out'])} | {_f(x['generative'])} | {_f(x['probe_accuracy'])} | "
                     f"{_f(x['steering_success'])} |")
    first = fd["earliest_layer"]
    later = max((x["later_max"] for x in rows if x["later_max"] is not None), default=float("nan"))
    pairs = "; ".join(f"{q['clean']} vs {q['corrupted']}: layer {q['earliest_layer']}"
                      if q["earliest_layer"] is not None else f"{q['clean']} vs {q['corrupted']}: none"
                      for q in p["pairs"])
    reading = []
    if first is None:
        reading.append(f"No single layer's residual stream restores {p['level']:g} of the gap.")
    else:
        reading.append(
            f"The prompt's genre reaches the output through the residual stream from layer {first} on: "
            f"the earliest layer whose whole-clip patch restores at least {p['level']:g} of the gap "
            f"({_f(rows[first]['resid_post'])}; the layer before it {_f(rows[first - 1]['resid_post']) if first else 'n/a'}). "
            + (f"In time it is the first {w:g} s: that window alone restores" if fd["first_window_share"] >= 0.5
               else f"In time it is spread out: the first {w:g} s alone restores")
            + f" {fd['first_window_share']:.0%} of what the whole clip does there, and no "
            f"later window of any layer more than {_f(later, 3)}"
            + (" (once the codes play a genre, the prompt adds little)." if later < 0.05 else "."))
    reading.append(f"Earliest such layer per genre pair: {pairs}. The cross-attention outputs (where the text "
                   f"enters) matter most at layer {fd['best_cross_attn_layer']}, and one at a time add up to "
                   f"{_f(fd['cross_attn_sum'])}.")
    gens = [x["generative"] for x in rows]
    reading.append(
        f"Generating on, copying the first {g['first']:g} s of one layer's residual stream gives {_f(min(gens))} "
        f"to {_f(max(gens))}"
        + (f" (at least {p['level']:g} from layer {fd['earliest_layer_generative']} on): while generating, the "
           f"clean run plays other codes than the corrupted one, so every layer's residual stream carries the "
           f"clean music, and the continuation follows the music it was given more than the prompt it keeps "
           f"reading."
           if fd["earliest_layer_generative"] is not None else
           ": the continuation follows the prompt it keeps reading."))
    reading.append(f"A probe reads genre best at layer {fd['best_probe_layer']} (notebook 03's rule; accuracy "
                   f"{_f(rows[fd['best_probe_layer']]['probe_accuracy'])}), steering succeeds most at layer "
                   f"{fd['best_steering_layer']} ({_f(rows[fd['best_steering_layer']]['steering_success'])}).")
    lines += ["", *[f"> {s}" for s in reading]]
    return "\n".join(lines)


def _needed(v: float | None, max_k: int) -> str:
    return f"> {max_k}" if v is None else f"{v:g}"


def render_features() -> str:
    r = _patching_sae()
    if r is None:
        return "(no results yet: run `python experiments/patching_sae.py`)"
    f = r["features"]
    m = f["models"]
    lines = [f"Measured by `python experiments/patching_sae.py` (notebook 09's calls): TopK SAE "
             f"({f['width']} latents, k = {f['k']}, {f['epochs']} epochs, eai-sparsify) on per-frame `{f['hook']}` "
             f"of {f['clips']} procedural clips of 6 s, trained on {f['train_rows']:,} frames and measured on "
             f"the {f['heldout_clips']} held-out clips; the same for the untrained model of the same shape. "
             f"Splice: {f['splice_prompts']} genre prompts generated with the layer replaced by the SAE's "
             f"reconstruction, grammar log-likelihood per frame.", "",
             "| model | FVU (held-out frames) | L0 | dead latents | loglik: unchanged -> spliced (cost) | mean ablation cost |",
             "|---|---|---|---|---|---|"]
    for name in ("trained", "untrained"):
        q = m[name]
        lines.append(f"| {name} | {q['fvu']:.3f} | {q['l0']:g} | {q['dead']} of {f['width']} | "
                     f"{q['loglik_unchanged']:.2f} -> {q['loglik_spliced']:.2f} ({q['splice_cost']:.2f}) | "
                     f"{q['mean_ablation_cost']:.2f} |")
    lines += ["", f"Best single latent per factor value (clip-level AUROC, the latent's mean over each clip's "
              f"frames; per frame in brackets) and the latents a sparse logistic probe needs for "
              f"{f['level']:g} balanced accuracy (at most {f['max_k']}):", "",
              "| factor = value | best latent, trained | untrained | latents needed, trained | untrained |",
              "|---|---|---|---|---|"]
    for x in f["factors"]:
        lines.append(f"| {x['factor']} = {x['value']} | **{x['trained_auroc']:.3f}** ({x['trained_frame_auroc']:.3f}) | "
                     f"{x['untrained_auroc']:.3f} ({x['untrained_frame_auroc']:.3f}) | "
                     f"{_needed(x['trained_needed'], f['max_k'])} | {_needed(x['untrained_needed'], f['max_k'])} |")
    lines += ["", f"Steering toward a genre at `{f['hook']}` (0.5 x mean norm, both branches, {f['steer_prompts']} "
              f"unconditional prompts; {f['draws']} random directions of equal norm):", "",
              "| target | direction | success | unsteered twins | random: mean (highest) | loglik drop | cosine to the probe |",
              "|---|---|---|---|---|---|---|"]
    for s in f["steering"]:
        name = f"SAE latent {s['feature']}" if s["direction"] == "SAE latent" else s["direction"]
        lines.append(f"| {s['target']} | {name} | **{_f(s['success'])}** | {_f(s['base_rate'])} | "
                     f"{_f(s['random_mean'])} ({_f(s['random_max'])}) | {_f(s['ll_drop'])} | {_f(s['cosine'])} |")
    genre = [x for x in f["factors"] if x["factor"] == "genre"]
    tr, un = [x["trained_auroc"] for x in genre], [x["untrained_auroc"] for x in genre]
    reached = {n: sum(x[f"{n}_needed"] is not None for x in genre) for n in ("trained", "untrained")}
    st = pd.DataFrame(f["steering"])
    mean = st.groupby("direction")["success"].mean()
    beats = (st["success"] > st["random_max"]).groupby(st["direction"]).sum()
    fvu = (m["trained"]["fvu"], m["untrained"]["fvu"])
    reading = [
        f"Without labels, the SAE on the trained model has a latent for every genre: the best one per genre "
        f"reaches a clip-level AUROC of {min(tr):.3f} to {max(tr):.3f}, against {min(un):.3f} to {max(un):.3f} "
        f"in the untrained model (the best of {f['width']} latents on the same clips); a sparse probe reaches "
        f"{f['level']:g} on {reached['trained']} of {len(genre)} genres (trained) and {reached['untrained']} "
        f"(untrained).",
        f"It leaves {fvu[0]:.1%} of the variance unexplained ({fvu[1]:.1%} in the untrained model) and, spliced "
        f"in, costs {m['trained']['splice_cost']:.2f} nats per frame of grammar log-likelihood (removing the "
        f"layer's output: {m['trained']['mean_ablation_cost']:.2f}).",
        f"Steering with the best genre latent's decoder direction succeeds {_f(mean.get('SAE latent'))} on "
        f"average over {len(st) // 2} target(s), the logistic probe's direction {_f(mean.get('logistic probe'))}; "
        f"above every random draw for {int(beats.get('SAE latent', 0))} and {int(beats.get('logistic probe', 0))} "
        f"of them.",
    ]
    lines += ["", *[f"> {s}" for s in reading]]
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


def render_notebooks() -> str:
    default, full = _load("notebook_times"), _load("notebook_times_full")
    if default is None:
        return "(no results yet: run `python benchmarks/notebook_times.py`)"
    fulls = {r["notebook"]: r for r in (full or {}).get("notebooks", [])}
    lines = [f"Measured by `python benchmarks/notebook_times.py` (every notebook in order, one at a time, kernel "
             f"start included; {default['cpus']} cores; `--full` for `FULL = True`). Target: "
             f"{default['target_s']:g} s each in default mode.", "",
             "| notebook | default (s) | slowest cell (s) | load (1 min) | `FULL = True` (s) |", "|---|---|---|---|---|"]
    for r in default["notebooks"]:
        cell = r["slowest_cells"][0]["seconds"] if r["slowest_cells"] else float("nan")
        f = fulls.get(r["notebook"])
        lines.append(f"| `{r['notebook']}` | {r['wall_s']:.0f}{'' if r['ok'] else ' (failed)'} | {cell:.0f} | "
                     f"{r['load_1min_before']:.1f} | {f['wall_s']:.0f} |" if f else
                     f"| `{r['notebook']}` | {r['wall_s']:.0f} | {cell:.0f} | {r['load_1min_before']:.1f} | n/a |")
    return "\n".join(lines)


def render_bench() -> str:
    lines = ["| benchmark | measured (ratios from interleaved arms) | target | when (1-min load) |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _bench_rows()]
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {"testbed": render_testbed, "demo": render_demo,
                                        "findings": render_findings, "patching": render_patching,
                                        "features": render_features, "export": render_export,
                                        "bench": render_bench, "notebooks": render_notebooks}


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
