"""Helpers of the fault-injection suite: store comparison and small filesystems."""
from __future__ import annotations

import atexit
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from mstools.data.store import ActivationStore


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float tensor (so that -0.0 and NaN payloads must match too)."""
    return t.contiguous().view({torch.float16: torch.int16, torch.bfloat16: torch.int16,
                                torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def assert_same_store(a: str | Path | ActivationStore, b: str | Path | ActivationStore) -> None:
    """Same labels table and the same bits in every hook, in the same order."""
    a = a if isinstance(a, ActivationStore) else ActivationStore.open(a)
    b = b if isinstance(b, ActivationStore) else ActivationStore.open(b)
    pd.testing.assert_frame_equal(a.labels, b.labels)
    assert a.hooks == b.hooks
    for h in a.hooks:
        assert torch.equal(bits(a.features(h, None)), bits(b.features(h, None))), h


def mount_tmpfs(where: Path, size: str) -> Path:
    """A tmpfs of ``size`` at ``where`` (unmounted when the test session ends); skips without root."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"mstools-{uuid.uuid4().hex[:6]}",
                           str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:80]}); needs root")
    _MOUNTS.append(where)
    return where


_MOUNTS: list[Path] = []


@atexit.register
def unmount_all() -> None:
    """Unmount every tmpfs this session mounted (at exit)."""
    while _MOUNTS:
        subprocess.run(["umount", "-l", str(_MOUNTS.pop())], capture_output=True)
