"""Faults and bad input at the command line, in real processes: signals, a full disk, a read-only
folder, damaged files, typos. Each case checks the exit code, the one-line message (no traceback)
and, where data was written, that the store ends bit-identical to an uninterrupted run.

Mounting small or read-only filesystems (tmpfs) needs root; those cases are skipped otherwise.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from faults_common import assert_same_store, mount_tmpfs

ROOT = Path(__file__).resolve().parents[2]
BASE = ["cache", "--model", "random-tiny", "--hooks", "blocks.*.hook_resid_post", "--no-progress"]


def env() -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
         "TRANSFORMERS_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "MSTOOLS_DEBUG"):
        e.pop(key, None)
    return e


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mstools", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr
    assert "Traceback" not in err, err
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run the damaged and interrupted runs must end equal to."""
    out = tmp_path_factory.mktemp("ref") / "store"
    proc = cli(*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def _run_and_signal(out: Path, sig: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mstools", *BASE, "--source", "testbed:96:2",
                             "--batch-size", "4", "--shard-rows", "8", "--out", str(out)],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until the first shards exist, then interrupt mid-run
        if len(list(out.glob("rank000-0000[2-9].safetensors"))) >= 1:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(60)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_caching_resumes_bit_identically(tmp_path, reference, sig):
    out = tmp_path / "store"
    proc = _run_and_signal(out, sig)
    if sig == signal.SIGINT:
        err = proc.stderr.read()
        assert proc.returncode == 130 and "run the same command again to resume" in err
        assert "Traceback" not in err
    else:
        assert proc.returncode != 0
    again = cli(*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8",
                "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert_same_store(out, reference)
    assert not list(out.glob(".*.lock")) and not list(out.glob("*.tmp"))


def test_full_disk_says_so_and_resumes(tmp_path, reference):
    where = mount_tmpfs(tmp_path / "small", "72k")
    out = where / "store"
    proc = cli(*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8",
               "--out", str(out))
    assert_one_line_error(proc, 1, "disk is full", "run the same command again")
    subprocess.run(["mount", "-o", "remount,size=50m", str(where)], check=True)
    again = cli(*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8",
                "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert_same_store(out, reference)


def test_read_only_folder(tmp_path, reference):
    where = mount_tmpfs(tmp_path / "ro", "20m")
    done = where / "done"
    assert cli(*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8",
               "--out", str(done)).returncode == 0
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    # a finished store needs no writing: the same command succeeds on a read-only copy
    proc = cli(*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8",
               "--out", str(done))
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before
    proc = cli(*BASE, "--source", "testbed:8:2", "--out", str(where / "new"))
    assert_one_line_error(proc, 1, "cannot write", "Read-only file system")


@pytest.mark.parametrize("args, needle", [
    (["--source", "testbed:4:nan"], "SECONDS must be a positive number"),
    (["--source", "testbed:x"], "N (clips) must be a number"),
    (["--source", "bogus:1"], "--source must be"),
    (["--source", "testbed:2:1", "--hooks", ","], "names no hook"),
    (["--source", "testbed:2:1", "--hooks", "blocks.0.hook_resid_psot"], "Did you mean"),
    (["--source", "testbed:2:1", "--device", "cuda"], "no usable CUDA GPU"),
    (["--source", "testbed:2:1", "--device", "bogus"], "unknown device 'bogus'"),
    (["--source", "testbed:2:1", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--source", "testbed:2:1", "--pooling", "window:5:6"], "starts after the clips end"),
    (["--source", "testbed:2:1", "--pooling", "window:a:b"], "window:T0:T1"),
    (["--source", "testbed:2:1", "--pooling", "median"], "--pooling 'median'"),
    (["--source", "testbed:2:1", "--branches", ","], "names no branch"),
    (["--source", "testbed:2:1", "--duration", "-1"], "--duration must be a positive number"),
    (["--source", "audio:/no/such/folder"], "does not exist"),
    (["--source", "prompts:/no/such.json"], "does not exist"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, needle):
    out = tmp_path / "store"
    proc = cli(*BASE, *args, "--out", str(out))
    assert_one_line_error(proc, 2, needle)
    assert not out.exists()  # refused before anything was written


def test_corrected_command_runs_after_a_refused_one(tmp_path):
    out = tmp_path / "store"
    assert cli(*BASE, "--source", "testbed:4:1", "--batch-size", "0", "--out", str(out)).returncode == 2
    assert cli(*BASE, "--source", "testbed:4:1", "--pooling", "window:3:4", "--out", str(out)).returncode == 2
    proc = cli(*BASE, "--source", "testbed:4:1", "--batch-size", "8", "--pooling", "window:0:0.5",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr


def test_out_naming_a_file_and_unknown_model(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_one_line_error(cli(*BASE, "--source", "testbed:2:1", "--out", str(f)), 2, "is a file")
    assert f.read_text() == "x"
    proc = cli("cache", "--model", "random-huge", "--source", "testbed:2:1", "--out", str(tmp_path / "s"))
    assert_one_line_error(proc, 2, "unknown model 'random-huge'")


def test_missing_weights_offline_names_what_to_download(tmp_path):
    proc = cli("hooks", "--model", "facebook/musicgen-small")
    assert_one_line_error(proc, 1, "hf download facebook/musicgen-small")


def test_debug_shows_the_traceback(tmp_path):
    proc = cli("--debug", *BASE, "--source", "testbed:2:1", "--batch-size", "0", "--out", str(tmp_path / "s"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_damaged_shard_is_recomputed_on_rerun(tmp_path, reference):
    out = tmp_path / "store"
    args = [*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8", "--out", str(out)]
    assert cli(*args).returncode == 0
    shard = out / "rank000-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x40  # same size, one flipped bit in the tensor bytes
    shard.write_bytes(bytes(data))
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "recomputed" in proc.stderr
    assert_same_store(out, reference)


def test_swapped_shards_are_recomputed_on_rerun(tmp_path, reference):
    out = tmp_path / "store"
    args = [*BASE, "--source", "testbed:96:2", "--batch-size", "4", "--shard-rows", "8", "--out", str(out)]
    assert cli(*args).returncode == 0
    by_size: dict[int, list[Path]] = {}
    for s in sorted(out.glob("rank000-*.safetensors")):
        by_size.setdefault(s.stat().st_size, []).append(s)
    pairs = [v for v in by_size.values() if len(v) >= 2]
    assert pairs, "no two shards of one size to swap"
    a, b = pairs[0][:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    assert cli(*args).returncode == 0
    assert_same_store(out, reference)


def test_unreadable_and_nan_audio(tmp_path):
    folder = tmp_path / "audio" / "jazz"
    folder.mkdir(parents=True)
    sr = 16000
    for i in range(3):
        sf.write(folder / f"ok{i}.wav", np.sin(np.arange(sr) * 0.01 * (i + 1)).astype("float32"), sr)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00not audio")
    args = [*BASE, "--source", f"audio:{tmp_path / 'audio'}", "--out"]
    assert_one_line_error(cli(*args, str(tmp_path / "s1")), 2, "broken.wav", "skip_unreadable")
    proc = cli(*args, str(tmp_path / "s2"), "--skip-unreadable")
    assert proc.returncode == 0 and "leaving out 1 unreadable" in proc.stderr
    nan = np.full(sr, np.nan, dtype="float32")
    (folder / "broken.wav").unlink()
    sf.write(folder / "zz_nan.wav", nan, sr, subtype="FLOAT")  # 32-bit float WAV keeps NaN
    proc = cli(*args, str(tmp_path / "s3"), "--batch-size", "1")
    assert_one_line_error(proc, 2, "zz_nan.wav", "NaN")


def test_damaged_manifest_is_an_environment_error(tmp_path):
    """A damaged file is not a mistake in the command: exit 1, one line, and how to rebuild."""
    out = tmp_path / "store"
    args = [*BASE, "--source", "testbed:8:2", "--batch-size", "4", "--out", str(out)]
    assert cli(*args).returncode == 0
    (out / "manifest.json").write_bytes(b'{"kind": "mstools-activation-st')
    assert_one_line_error(cli(*args), 1, "ActivationStore.merge")
