"""The Hugging Face Hub, as released checkpoints need it: is it reachable, and staying quiet offline.

Loading ``facebook/musicgen-small`` (and, on the audiocraft backend, ``t5-base`` and
``facebook/encodec_32khz``) asks the hub for files. On a machine without network, the hub client
would retry each request and log every retry; :func:`prepare_offline` checks once, with a short
connection attempt, and switches the clients to offline mode first, so a missing checkpoint fails at
once from the local cache with one clear error (which :func:`mstools.ui.notebook.setup` turns into
a fallback to the testbed). :func:`quiet` silences the clients' retry and download logging.

>>> hub_reachable(timeout=0.01, endpoint="http://127.0.0.1:9")   # nothing listens on port 9
False
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Iterator
from urllib.parse import urlparse

__all__ = ["hub_reachable", "offline", "go_offline", "prepare_offline", "quiet", "DEFAULT_ENDPOINT"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """True when the hub clients are told to stay offline (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` set to a true value)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 2.0, endpoint: str | None = None) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT`` or huggingface.co) opens within
    ``timeout`` seconds. No request is sent."""
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Put huggingface_hub and transformers in offline mode, also when they are already imported
    (huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def prepare_offline(timeout: float = 2.0) -> str:
    """Before fetching a released checkpoint: ``"offline"`` when offline mode was already asked for,
    ``"online"`` when the hub answers, else switch to offline mode (:func:`go_offline`) and return
    ``"unreachable"``: files then come from the local cache or fail at once, without retries."""
    if offline():
        go_offline()
        return "offline"
    if hub_reachable(timeout):
        return "online"
    go_offline()
    return "unreachable"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the hub and transformers loggers (retries, download notices) inside the block."""
    names = ("huggingface_hub", "huggingface_hub.utils._http", "transformers", "httpx", "urllib3")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
