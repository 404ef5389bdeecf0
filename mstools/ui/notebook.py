"""The one set-up call every notebook makes.

>>> from mstools.ui.notebook import setup
>>> nb = setup(MODEL="testbed", quiet=True)   # loads the model, pins threads, seeds (quiet: no print)
>>> nb.model.model_name, nb.backend, nb.size(256, quick=32) in (256, 32)
('testbed', 'audiocraft', True)
>>> nb = setup("testbed", BACKEND="transformers", quiet=True)   # the same model in transformers

Three sizes of work. By default a notebook runs its lesson in about a minute on a 2-core CPU;
``setup(..., FULL=True)`` (the ``FULL`` parameter of every notebook) asks for the bigger run (more
clips, seeds and draws: from about a minute to several minutes); under test (``MSTOOLS_TEST=1``,
set by ``make test``) ``nb.quick`` is True and the smallest sizes run, whatever ``FULL`` says. ``nb.size(default, quick,
full=...)`` picks the number for the mode (:meth:`Notebook.size`).

In a notebook, ``setup`` also makes figures survive sharing (:func:`shareable_plots`): plotly.js is
embedded once in the notebook and every figure carries both plotly's own mimetype (JupyterLab, VS
Code) and self-contained HTML (``jupyter nbconvert --to html``, offline), plus a static PNG when
kaleido is installed (viewers that run no scripts, such as GitHub's).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from typing import Any

import torch

from mstools.core.errors import MissingWeightsError
from mstools.core.threads import resolve as model_threads
from mstools.core.names import BACKENDS
from mstools.model import hub
from mstools.model.loading import load_musicgen, parse_model_name

__all__ = ["setup", "Notebook", "under_test", "in_notebook", "plotly_renderer", "shareable_plots"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython, not a plain script)."""
    try:
        from IPython import get_ipython  # lazy: only to ask where we run
    except ImportError:  # pragma: no cover - IPython is installed with the notebook extras
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def plotly_renderer() -> str:
    """The plotly renderers notebooks use: ``"notebook+plotly_mimetype"`` (plotly.js embedded once,
    offline, for HTML exports; plotly's mimetype for JupyterLab and VS Code), ``+png`` when kaleido
    can draw static images."""
    names = ["notebook", "plotly_mimetype"]
    if importlib.util.find_spec("kaleido") is not None:
        names.append("png")
    return "+".join(names)


def shareable_plots() -> str:
    """Set plotly's default renderer to :func:`plotly_renderer` and return it."""
    import plotly.io as pio  # lazy: display libraries load when something is drawn
    pio.renderers.default = plotly_renderer()
    return pio.renderers.default


def under_test() -> bool:
    """True when notebooks run under the test suite (``MSTOOLS_TEST=1``)."""
    return os.environ.get("MSTOOLS_TEST", "") not in ("", "0", "false", "False")


@dataclasses.dataclass
class Notebook:
    """What a notebook needs: the model, whether to shrink work, where to write.

    ``model_name`` is the model actually running (``"testbed"`` after a fallback), ``backend`` the
    implementation it runs on (``"audiocraft"`` or ``"transformers"``), ``asked`` the model the
    notebook asked for and ``path`` one sentence saying how the running model was obtained (e.g. that
    a checkpoint was read from the local cache, or why the notebook fell back to the testbed).
    """

    model: Any
    model_name: str
    quick: bool
    device: str
    outputs: str
    asked: str = ""
    path: str = ""
    full: bool = False

    @property
    def fell_back(self) -> bool:
        """True when the model asked for could not be loaded and the testbed runs instead."""
        return bool(self.asked) and self.asked != self.model_name

    @property
    def backend(self) -> str:
        return self.model.backend_name

    @property
    def mode(self) -> str:
        """``"quick"`` (under test), ``"full"`` (``FULL=True``) or ``"default"``."""
        return "quick" if self.quick else "full" if self.full else "default"

    def size(self, default: Any, quick: Any, full: Any = None) -> Any:
        """The size of some work for the mode the notebook runs in.

        ``quick`` under test (it wins over ``FULL``), ``full`` when the notebook was set up with
        ``FULL=True`` and ``full`` is given, ``default`` otherwise. Two-argument calls,
        ``nb.size(default, quick)``, give ``default`` with ``FULL`` too.

        >>> nb = Notebook(model=None, model_name="testbed", quick=False, device="cpu", outputs="out")
        >>> nb.size(8, 2, full=32), nb.size(8, 2), nb.mode
        (8, 8, 'default')
        >>> nb.full = True
        >>> nb.size(8, 2, full=32), nb.size(8, 2), nb.mode
        (32, 8, 'full')
        >>> nb.quick = True                       # under test the quick size wins
        >>> nb.size(8, 2, full=32), nb.mode
        (2, 'quick')
        """
        if self.quick:
            return quick
        if self.full and full is not None:
            return full
        return default


def setup(MODEL: str = "testbed", BACKEND: str = "audiocraft", FULL: bool = False, *,
          device: str | None = None,
          seed: int = 0, threads: int | None = None, outputs: str = "outputs",
          quiet: bool = False) -> Notebook:
    """Load ``MODEL`` on ``BACKEND`` and set up: threads, seed, output folder.

    Args:
        MODEL: ``"testbed"``, ``"random-tiny"``/``"random-small"`` (random weights, real shapes) or a
            checkpoint (``"facebook/musicgen-small"`` or a local folder).
        BACKEND: ``"audiocraft"`` (Meta's reference code) or ``"transformers"`` (Hugging Face's
            MusicGen). Hook names, shapes and steps are the same on both.
        threads: torch threads for the whole notebook; default: 1 under test, else the model's
            thread policy (:mod:`mstools.core.threads`: 1 for a small model such as the testbed,
            torch's setting for a real checkpoint).
        FULL: the bigger run: ``nb.size(default, quick, full=...)`` returns ``full`` (more clips,
            seeds, draws; up to several minutes instead of about a minute). Ignored under test (``nb.quick``).

    A real checkpoint whose weights are missing falls back to the testbed on the same backend, and
    says so in one printed note (``nb.path``; outside a notebook also as a warning). Without network
    the hub clients are put in offline mode first, so the fallback is immediate (no retries).

    >>> nb = setup("testbed", BACKEND="transformers", quiet=True)
    >>> nb.backend, nb.model.backend_name
    ('transformers', 'transformers')
    >>> setup("testbed", FULL=True, quiet=True).full
    True
    """
    if BACKEND not in BACKENDS:
        raise ValueError(f"BACKEND must be one of {BACKENDS}, got {BACKEND!r}")
    if FULL not in (True, False):
        raise ValueError(f"FULL must be True or False, got {FULL!r}")
    quick = under_test()
    if quick:  # tests never reach for the hub (a missing checkpoint falls back at once)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if threads or quick:
        torch.set_num_threads(threads or 1)
    torch.manual_seed(seed)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    notebook = in_notebook()
    if notebook:
        shareable_plots()
    name = MODEL
    kind = parse_model_name(MODEL)[0]
    hub_state = hub.prepare_offline() if kind == "checkpoint" else ""
    try:
        model = load_musicgen(MODEL, device=device, backend=BACKEND, seed=seed)
        path = {"checkpoint": f"{MODEL}: " + ("read from the local Hugging Face cache (offline)"
                                               if hub_state != "online" else
                                               "from the Hugging Face hub (or its local cache)"),
                "folder": f"{MODEL}: a local checkpoint folder",
                "random": f"{MODEL}: random weights (real architecture)"}.get(
            kind, f"{MODEL}: embedded in mstools")
    except MissingWeightsError as e:
        reason = str(e).splitlines()[0]
        how = "\n".join(str(e).splitlines()[1:])
        why = "no network: offline mode, and not in the local cache" if hub_state in ("unreachable",
                                                                                    "offline") else reason
        path = f"testbed instead of {MODEL} ({why})"
        note = (f"{MODEL} is not available here ({why}), so this notebook runs on the testbed "
                f"({BACKEND} backend) instead.\n{how}")
        if notebook:
            print(note)
        else:
            warnings.warn(f"{reason} -> running on the testbed ({BACKEND} backend) instead.\n{how}")
        name = "testbed"
        model = load_musicgen("testbed", device=device, backend=BACKEND)
    if not threads and not quick:
        # the model's own policy for everything else a notebook runs in torch (probe fits, SAE
        # training...): one thread for a small model, where threads mostly wait on each other
        n = model_threads(getattr(model, "threads", "auto"), getattr(model, "_n_params", 0))
        if n:
            torch.set_num_threads(n)
    os.makedirs(outputs, exist_ok=True)
    if not quiet:
        print(f"{model}\nbackend: {BACKEND}, device: {device}, torch threads: "
              f"{torch.get_num_threads()}, "
              + ("quick mode (under test)" if quick else "FULL: the bigger run" if FULL
                 else "default sizes (FULL = True for the bigger run)"))
    return Notebook(model=model, model_name=name, quick=quick, device=device,
                    outputs=outputs, asked=MODEL, path=path, full=bool(FULL))
