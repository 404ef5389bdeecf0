"""Fault-injection suite: shared set-up (helpers importable, mounts removed at the end)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faults_common import unmount_all  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _unmount():
    yield
    unmount_all()
