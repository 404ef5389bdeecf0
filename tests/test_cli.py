"""``python -m mstools`` end to end: in a subprocess, under ``torchrun`` (2 ranks, gloo), in-process
(``--backend transformers``, errors).

References: ``run_with_cache`` on the testbed clips computed here (on the backend asked for), the
model's own hook list, and the single-process store for the two-rank run (bit for bit, labels and
order included).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mstools import build_musicgen, load_musicgen
from mstools.apps.cli import main
from mstools.data.store import ActivationStore
from mstools.testbed import make_dataset

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def test_cli_cache_testbed_source_equals_run_with_cache(tmp_path):
    out = tmp_path / "store"
    proc = run([PYTHON, "-m", "mstools", "cache", "--model", "random-tiny",
                "--source", "testbed:5:1.0:2", "--hooks", ",".join(HOOKS), "--pooling", "mean",
                "--branches", "cond,uncond", "--batch-size", "2", "--out", str(out)])
    assert "10 rows (5 clips x 2 branch(es))" in proc.stdout
    assert "cache: 100%" in proc.stderr  # the progress bar

    store = ActivationStore.open(out)
    model = build_musicgen("tiny", seed=0)
    assert store.fingerprint == model.fingerprint
    clips = make_dataset(5, frames=10, seed=2)
    rows = {h: [] for h in HOOKS}
    for batch in (clips[0:2], clips[2:4], clips[4:5]):
        codes = torch.stack([c.codes for c in batch])
        _, cond = model.run_with_cache(codes, [c.prompt for c in batch], names_filter=HOOKS)
        _, uncond = model.run_with_cache(codes, None, names_filter=HOOKS)
        for h in HOOKS:
            both = torch.stack([cond[h].mean(1), uncond[h].mean(1)], dim=1)
            rows[h].append(both.reshape(-1, model.d_model))
    for h in HOOKS:
        want = torch.cat(rows[h]).to(torch.float16)
        assert torch.equal(bits(store.features(h, dtype=None)), bits(want)), h
    assert store.labels["genre"].tolist()[::2] == [c.labels["genre"] for c in clips]
    assert store.labels["branch"].tolist()[:2] == ["cond", "uncond"]


def test_cli_hooks_prints_every_hook_point():
    proc = run([PYTHON, "-m", "mstools", "hooks", "--model", "random-tiny"])
    model = build_musicgen("tiny", seed=0)
    lines = proc.stdout.splitlines()
    listed = [line.split()[0] for line in lines[2:]]  # model line, header, then one row per hook
    assert listed == model.hook_names
    assert any("blocks.1.attn.hook_z" in ln and "[B, S, H, D/H]" in ln for ln in lines)


def test_cli_under_torchrun_two_ranks_equals_single_process(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"templates": ["{genre} music with {instrument}"],
                                   "labels": {"genre": ["jazz", "rock", "folk"],
                                              "instrument": ["piano", "brass"]},
                                   "repeats": 2}))
    common = ["cache", "--model", "random-tiny", "--source", f"prompts:{prompts}",
              "--hooks", "blocks.*.hook_resid_post", "--branches", "cond,uncond",
              "--batch-size", "3", "--duration", "0.6", "--seed", "7", "--no-progress"]
    run([PYTHON, "-m", "mstools", *common, "--out", str(tmp_path / "single")])
    proc = run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "mstools", *common,
                "--out", str(tmp_path / "dist")], timeout=180)
    assert "2 process(es)" in proc.stdout

    single, dist = ActivationStore.open(tmp_path / "single"), ActivationStore.open(tmp_path / "dist")
    written = sorted(p.name for p in (tmp_path / "dist").glob("rank*.safetensors"))
    assert {n[:7] for n in written} == {"rank000", "rank001"}  # both ranks wrote shards
    assert len(single) == len(dist) == 24
    pd.testing.assert_frame_equal(dist.labels, single.labels)
    for h in single.hooks:
        assert torch.equal(bits(dist.features(h, None)), bits(single.features(h, None))), h
    assert dist.verify()["rows"] == 24


def test_cli_backend_transformers_caches_with_the_transformers_model(tmp_path, capsys):
    out = tmp_path / "store"
    common = ["cache", "--model", "testbed", "--source", "testbed:3:1.0:2", "--hooks", ",".join(HOOKS),
              "--batch-size", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(common + ["--backend", "transformers"]) == 0
    store = ActivationStore.open(out)
    model = load_musicgen("testbed", device="cpu", backend="transformers")
    assert store.fingerprint == model.fingerprint and store.meta["backend"] == "transformers"
    clips = make_dataset(3, frames=10, seed=2)
    for h in HOOKS:  # batch size 1: each clip alone
        want = torch.cat([model.run_with_cache(c.codes[None], [c.prompt], names_filter=h)[1][h].mean(1)
                          for c in clips]).to(torch.float16)
        assert torch.equal(bits(store.features(h, dtype=None)), bits(want)), h
    capsys.readouterr()
    assert main(common) == 2  # the default backend (audiocraft) does not resume it
    assert "backend: the store has 'transformers', this run asks for 'audiocraft'" in \
        capsys.readouterr().err

    assert main(["hooks", "--model", "random-tiny", "--backend", "transformers"]) == 0
    printed = capsys.readouterr().out
    assert "on transformers" in printed.splitlines()[0]
    assert any(ln.split()[:3] == ["blocks.1.hook_mlp_out", "1", "decoder.model.decoder.layers.1.fc2"]
               for ln in printed.splitlines())
    with pytest.raises(SystemExit):
        main(["hooks", "--model", "random-tiny", "--backend", "jax"])


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["cache", "--model", "random-tiny", "--source", "testbed:2:0.5", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    assert main(args + ["--pooling", "last"]) == 2
    err = capsys.readouterr().err
    assert "holds a store made with other settings" in err and "pooling" in err
    assert main(["cache", "--model", "random-tiny", "--source", "testbed", "--out", str(out)]) == 2
    assert "--source must be testbed:N" in capsys.readouterr().err
    assert main(["cache", "--model", "random-huge", "--source", "testbed:2", "--out", str(out)]) == 2
    assert "unknown model 'random-huge'" in capsys.readouterr().err
    assert main(args + ["--hooks", "blocks.9.hook_resid_post"]) == 2
    assert "unknown hook name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_command_help_is_what_the_command_line_prints(capsys):
    from mstools.apps.cli import command_help, main
    with pytest.raises(SystemExit):
        main(["cache", "--help"])
    assert command_help("cache") == capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown command"):
        command_help("nope")
