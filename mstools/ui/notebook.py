"""The one set-up call every notebook makes.

>>> from mstools.ui.notebook import setup
>>> nb = setup(MODEL="testbed", quiet=True)   # loads the model, pins threads, seeds (quiet: no print)
>>> nb.model.model_name, nb.backend, nb.size(256, quick=32) in (256, 32)
('testbed', 'audiocraft', True)
>>> nb = setup("testbed", BACKEND="transformers", quiet=True)   # the same model in transformers

Under test (``MSTOOLS_TEST=1``, set by ``make test``) ``nb.quick`` is True and ``nb.size`` returns the
small number, so every notebook runs in a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import torch

from mstools.core.errors import MissingWeightsError
from mstools.core.names import BACKENDS
from mstools.model.loading import load_musicgen

__all__ = ["setup", "Notebook", "under_test"]


def under_test() -> bool:
    """True when notebooks run under the test suite (``MSTOOLS_TEST=1``)."""
    return os.environ.get("MSTOOLS_TEST", "") not in ("", "0", "false", "False")


@dataclasses.dataclass
class Notebook:
    """What a notebook needs: the model, whether to shrink work, where to write.

    ``model_name`` is the model actually running (``"testbed"`` after a fallback) and ``backend`` the
    implementation it runs on (``"audiocraft"`` or ``"transformers"``).
    """

    model: Any
    model_name: str
    quick: bool
    device: str
    outputs: str

    @property
    def backend(self) -> str:
        return self.model.backend_name

    def size(self, full: int, quick: int) -> int:
        """``quick`` under test, ``full`` otherwise."""
        return quick if self.quick else full


def setup(MODEL: str = "testbed", BACKEND: str = "audiocraft", *, device: str | None = None,
          seed: int = 0, threads: int | None = None, outputs: str = "outputs",
          quiet: bool = False) -> Notebook:
    """Load ``MODEL`` on ``BACKEND`` and set up: threads, seed, output folder.

    Args:
        MODEL: ``"testbed"``, ``"random-tiny"``/``"random-small"`` (random weights, real shapes) or a
            checkpoint (``"facebook/musicgen-small"`` or a local folder).
        BACKEND: ``"audiocraft"`` (Meta's reference code) or ``"transformers"`` (Hugging Face's
            MusicGen). Hook names, shapes and steps are the same on both.

    A real checkpoint whose weights are missing falls back to the testbed on the same backend, and
    says so.

    >>> nb = setup("testbed", BACKEND="transformers", quiet=True)
    >>> nb.backend, nb.model.backend_name
    ('transformers', 'transformers')
    """
    if BACKEND not in BACKENDS:
        raise ValueError(f"BACKEND must be one of {BACKENDS}, got {BACKEND!r}")
    quick = under_test()
    if quick:  # tests never reach for the hub (a missing checkpoint falls back at once)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if threads or quick:
        torch.set_num_threads(threads or 1)
    torch.manual_seed(seed)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = MODEL
    try:
        model = load_musicgen(MODEL, device=device, backend=BACKEND, seed=seed)
    except MissingWeightsError as e:
        warnings.warn(f"{e}\n-> running on the testbed ({BACKEND} backend) instead.")
        name = "testbed"
        model = load_musicgen("testbed", device=device, backend=BACKEND)
    os.makedirs(outputs, exist_ok=True)
    if not quiet:
        print(f"{model}\nbackend: {BACKEND}, device: {device}, torch threads: "
              f"{torch.get_num_threads()}{', quick mode (under test)' if quick else ''}")
    return Notebook(model=model, model_name=name, quick=quick, device=device,
                    outputs=outputs)
