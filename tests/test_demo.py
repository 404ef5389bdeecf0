"""The main job end to end (quick size): report, wavs, tables."""
from __future__ import annotations

import html as html_lib
import json

import pandas as pd
import pytest
import soundfile as sf

import mstools.apps.demo as demo
from mstools.apps.cli import main


def test_demo_quick_writes_report_wavs_and_tables(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--threads", "1"]) == 0
    html = (tmp_path / "report.html").read_text()
    assert html.count("<audio") == 4 and "Probes with controls" in html and "Plotly.newPlot" in html
    wavs = sorted(tmp_path.glob("*.wav"))
    assert len(wavs) == 4
    for w in wavs:
        x, sr = sf.read(w)
        assert sr == 16000 and len(x) > 0 and abs(x).max() > 0
    results = json.loads((tmp_path / "results.json").read_text())
    # the summary is the instrument's, recomputed from the clip table the demo wrote
    table = pd.read_csv(tmp_path / "steering.csv")
    assert {"unsteered", "none", "random", "prompted"} <= set(table["control"])
    for row in results["steering"]:
        mine = table[(table.trial == row["trial"]) & (table.control == "none")]
        assert row["success"] == pytest.approx(mine["success"].astype(bool).mean())
        assert row["random_draws"] == 8
        twins = table[table.control == "unsteered"].set_index(["seed", "clip"]).loc[
            list(zip(mine["seed"], mine["clip"]))]
        assert row["base_rate"] == pytest.approx((twins["genre"] == row["target"]).mean())
    # the report's first sentences quote the run's own numbers
    probes = pd.DataFrame(results["probes"])
    assert set(probes["text"]) == {"prompt", "null"}
    for line, text in zip(results["reading"], ("null", "prompt")):
        genre = probes.query("text == @text and control == 'none' and method == 'logistic' "
                             "and target == 'genre'")
        trained = genre[genre.model == "trained"].set_index("layer")["accuracy_mean"]
        untrained = genre[genre.model == "untrained"].set_index("layer")["accuracy_mean"]
        layer = min(l for l, a in trained.items() if a >= trained.max() - 0.005)
        assert f"from layer {layer} on" in line and f"accuracy {trained[layer]:.2f}" in line
        assert f"reads it at {untrained[layer]:.2f}" in line
        assert html_lib.escape(line) in html


def test_backend_option_reaches_the_models(tmp_path, monkeypatch):
    """``--backend transformers`` is parsed, handed to run_demo, and both demo models run on it."""
    seen = {}

    class Stop(Exception):
        pass

    real = demo.demo_models

    def spy(seed, backend):
        seen["models"] = real(seed, backend)
        raise Stop  # the models are what we check; the pipeline itself is the test above

    monkeypatch.setattr(demo, "demo_models", spy)
    with pytest.raises(Stop):
        main(["--debug", "demo", "--out", str(tmp_path), "--quick", "--backend", "transformers", "--threads", "1"])
    model, untrained = seen["models"]
    assert (model.backend_name, untrained.backend_name) == ("transformers", "transformers")
    assert type(model.lm).__name__ == "MusicgenForCausalLM"
    # the same two models as on audiocraft (fingerprints are backend-independent)
    ref, ref_untrained = real(0, "audiocraft")
    assert (model.fingerprint, untrained.fingerprint) == (ref.fingerprint, ref_untrained.fingerprint)
    assert model.fingerprint != untrained.fingerprint
    with pytest.raises(SystemExit):
        main(["demo", "--backend", "jax"])
