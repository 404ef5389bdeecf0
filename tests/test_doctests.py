"""Every ``>>>`` example in mstools' docstrings runs, module by module.

The examples may use a few shared names, the objects a reader has at hand after the README's first
steps: ``model`` (the testbed), ``tiny`` (``build_musicgen("tiny")``), ``codes`` / ``prompts`` (the
testbed's reference clips), ``jazz`` / ``vector`` (a steering vector toward jazz on the testbed),
``store`` (a small activation store), ``musicgen`` (the testbed's audiocraft ``MusicGen``), ``out``
(a generation), ``fig`` and ``df`` (a figure and a table), plus ``torch``, ``np``, ``pd``,
``mstools``, ``tempfile``. Examples marked ``# doctest: +SKIP`` need what a test cannot have (a GPU,
downloaded weights, minutes of compute); everything else runs.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch

import mstools

MODULES = sorted(m.name for m in pkgutil.walk_packages(mstools.__path__, "mstools.")
                 if m.name != "mstools.__main__")


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    from mstools.analysis.directions import diff_means
    from mstools.data.caching import cache_activations
    from mstools.data.labelled import labelled_features
    from mstools.data.sources import testbed_clips
    from mstools.steering import SteeringVector
    from mstools.ui.plots import steering_bars

    model = mstools.load_musicgen("testbed")
    codes, prompts = model.reference_clips(4, 3.0)
    hook = "blocks.1.hook_resid_post"
    X, labels = labelled_features(model, testbed_clips(64, 3.0, seed=101), [hook])
    jazz = SteeringVector.from_directions(diff_means(X[hook], labels["genre"], "jazz", hook=hook),
                                          model.fingerprint)
    store = cache_activations(model, testbed_clips(8, 1.0, seed=0), tmp_path_factory.mktemp("doc") / "s",
                              "blocks.*.hook_resid_post", batch_size=4, progress=False)
    df = pd.DataFrame({"trial": ["a"], "success": [0.8], "success_lo": [0.6], "success_hi": [0.9],
                       "base_rate": [0.3]})
    return dict(model=model, tiny=mstools.build_musicgen("tiny"), codes=codes, prompts=prompts,
                jazz=jazz, vector=jazz, store=store, musicgen=model.musicgen,
                out=model.generate(["jazz"], 2.0, seed=0), fig=steering_bars(df), df=df,
                torch=torch, np=np, pd=pd, mstools=mstools, tempfile=tempfile)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name, namespace, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    examples = [t for t in tests if t.examples]
    if not examples:
        pytest.skip("no examples")
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in examples:
        test.globs = {**module.__dict__, **namespace}
        runner.run(test, out=lambda s: None)
    results = runner.summarize(verbose=False)
    if results.failed:
        report = []
        for test in examples:
            r = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            test.globs = {**module.__dict__, **namespace}
            buf: list[str] = []
            r.run(test, out=buf.append)
            if r.failures:
                report.append("".join(buf))
        pytest.fail(f"{results.failed} of {results.attempted} examples failed in {name}:\n"
                    + "\n".join(report)[:6000])
