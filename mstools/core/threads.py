"""How many CPU threads torch uses inside mstools' calls.

Small models spend their time synchronising threads, not computing: on a 2-core machine shared
with other work, generating 6 s on the testbed (0.6 M parameters) took 6-11 s with torch's default
2 threads and 0.8 s with one. Large models (musicgen-small and up) use every core. So each
:class:`~mstools.model.hooked.HookedMusicGen` call runs with the model's thread policy and
restores torch's setting afterwards:

- ``model.threads = "auto"`` (default): 1 thread for models under :data:`SMALL_MODEL` parameters,
  torch's current setting for larger ones;
- ``model.threads = n``: exactly ``n`` threads in mstools' calls;
- ``model.threads = None``: leave torch alone (``torch.set_num_threads`` decides).

The environment variable ``MSTOOLS_THREADS`` (a number, ``auto`` or ``torch``) sets the default of
new models.

>>> threads_for(600_000), threads_for(420_000_000) is None
(1, True)
>>> with using_threads(1):
...     torch.get_num_threads()
1
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["SMALL_MODEL", "threads_for", "using_threads", "default_policy", "resolve"]

#: Models with fewer parameters than this run on one thread under the ``"auto"`` policy.
SMALL_MODEL = 50_000_000

Policy = int | str | None


def threads_for(n_params: int) -> int | None:
    """The ``"auto"`` policy: 1 thread for a small model, None (torch's setting) for a large one."""
    return 1 if n_params < SMALL_MODEL else None


def default_policy() -> Policy:
    """The policy new models start with: ``MSTOOLS_THREADS`` if set, else ``"auto"``."""
    value = os.environ.get("MSTOOLS_THREADS", "auto").strip().lower()
    if value == "auto":
        return "auto"
    if value in ("torch", "none", ""):
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"MSTOOLS_THREADS must be a number, 'auto' or 'torch', got {value!r}") from None
    if n < 1:
        raise ValueError(f"MSTOOLS_THREADS must be >= 1, got {n}")
    return n


def resolve(policy: Policy, n_params: int) -> int | None:
    """Threads a policy asks for (None: leave torch's setting)."""
    if policy == "auto":
        return threads_for(n_params)
    if policy is None:
        return None
    if isinstance(policy, bool) or not isinstance(policy, int) or policy < 1:
        raise ValueError(f"model.threads must be 'auto', None or an integer >= 1, got {policy!r}")
    return policy


@contextlib.contextmanager
def using_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: unchanged), restoring the setting after."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
