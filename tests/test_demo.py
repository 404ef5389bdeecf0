"""The main job end to end (quick size): report, wavs, tables."""
from __future__ import annotations

import json

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
    controls = {r["control"] for r in results["steering"]}
    assert {"unsteered", "none", "random", "prompted"} <= controls
    genre = next(r for r in results["probes_best"] if r["target"] == "genre")
    assert genre["accuracy_mean"] > 0.5  # 4 genres: chance is 0.25


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
        main(["demo", "--out", str(tmp_path), "--quick", "--backend", "transformers", "--threads", "1"])
    model, untrained = seen["models"]
    assert (model.backend_name, untrained.backend_name) == ("transformers", "transformers")
    assert type(model.lm).__name__ == "MusicgenForCausalLM"
    # the same two models as on audiocraft (fingerprints are backend-independent)
    ref, ref_untrained = real(0, "audiocraft")
    assert (model.fingerprint, untrained.fingerprint) == (ref.fingerprint, ref_untrained.fingerprint)
    assert model.fingerprint != untrained.fingerprint
    with pytest.raises(SystemExit):
        main(["demo", "--backend", "jax"])
