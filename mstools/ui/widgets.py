"""An interactive steering panel for notebooks (ipywidgets): steer, listen, compare, read out.

:class:`SteeringPanel` puts the knobs of :class:`mstools.steering.Steerer` behind widgets (vector,
hooks, strength in units of the mean activation norm, time window, CFG branch, seed, prompt,
duration) and a Generate button. Each run generates the unsteered and the steered clip with the
same prompt, seed and random numbers (paired sampling, noise id :data:`NOISE_ID`) and shows them
side by side (audio players, spectrograms) above a per-second readout (:func:`mstools.analysis.readout.per_second`) of both clips.

How it behaves:

- Generation runs in a background thread, so the kernel stays free. One run at a time: while a run
  is going the Generate button is disabled and further :meth:`SteeringPanel.run` calls are
  **ignored** (not queued); the status line says so.
- Progress: an ``IntProgress`` advanced by a read-only hook that counts generation steps.
- Errors (a NaN strength, an empty window, a word the model does not know, ...) are caught and shown
  as one short message in the panel (the full traceback is kept in ``panel.last_traceback``).
  Steering hooks live only inside the generate call that uses them (``model.hooks`` removes them in
  ``finally``), so a failed run leaves no hook attached.
- The unsteered clip (and its readout) is cached by ``(prompt, seed, duration)``: changing only the
  steering settings regenerates only the steered clip.
- ``panel.run(sync=True)`` runs in the calling thread (tests, scripts); ``panel.result`` holds the
  last clips and readout table.

Do not use the same model elsewhere in the kernel while the panel is generating: generation state
lives on the model (audiocraft's streaming state inside its modules, and on either backend the step
clock and the hooks of the run).

Example:

>>> import mstools
>>> from mstools.ui.widgets import SteeringPanel
>>> model = mstools.load_musicgen("testbed")
>>> panel = SteeringPanel(model, {"jazz": jazz_vector}, prompts=["fast rock with brass"])  # doctest: +SKIP
>>> panel                      # displays the panel in a notebook                         # doctest: +SKIP
>>> panel.strength.value = 2.0; panel.run(sync=True); panel.result.steered.codes.shape    # doctest: +SKIP
torch.Size([1, 4, 60])
"""
from __future__ import annotations

import collections
import dataclasses
import html
import math
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from mstools.ui.audio import players, spectrogram, wav_bytes
from mstools.ui.plots import label_color
from mstools.analysis.readout import per_second
from mstools.steering import Steerer, SteeringVector, check_strength

__all__ = ["SteeringPanel", "PanelSettings", "PanelResult", "readout_figure", "STATIC_NOTE", "NOISE_ID"]

#: Noise id of the panel's clips (paired sampling, :mod:`mstools.model.sampling`): the unsteered and
#: the steered clip draw the same random numbers, and a panel clip with seed ``s`` and prompt ``p``
#: is clip 0 of :func:`mstools.evaluation.steering` run with ``prompts=[p]`` and ``seeds=[s]``.
NOISE_ID = 0

#: What a copy of the notebook without a running kernel shows in place of the panel (HTML export,
#: GitHub): the widgets need a live kernel. Hidden by CSS wherever the panel itself rendered.
STATIC_NOTE = ("Steering panel: interactive widgets need a running kernel. In a static copy of this "
               "notebook (HTML export, GitHub) run the cells above in Jupyter to use the panel; the "
               "saved result of the last run is shown further below.")

BRANCHES = ("cond", "uncond", "both")


@dataclasses.dataclass(frozen=True)
class PanelSettings:
    """A snapshot of the panel's controls, checked.

    Attributes:
        vector: name of the steering vector (a key of the panel's ``vectors``).
        hooks: the vector's hooks to steer (non-empty).
        strength: ``a`` in units of the mean activation norm at each hook.
        schedule: ``(t0, t1)`` window in seconds; ``t1`` is None when the window reaches the end of
            the clip (so the trailing delay-pattern steps, which complete the last frames, are
            steered too).
        branch: ``"cond"``, ``"uncond"`` or ``"both"``.
        seed, prompt, duration: as passed to ``generate``; an empty prompt box gives ``prompt=None``,
            unconditional generation (where steering has no text to compete with).
    """

    vector: str
    hooks: tuple[str, ...]
    strength: float
    schedule: tuple[float, float | None]
    branch: str
    seed: int
    prompt: str | None
    duration: float

    @property
    def clip_key(self) -> tuple[str | None, int, float]:
        """What the unsteered clip depends on: ``(prompt, seed, duration)``."""
        return (self.prompt, self.seed, self.duration)


@dataclasses.dataclass
class PanelResult:
    """The outcome of one run.

    Attributes:
        settings: the :class:`PanelSettings` used.
        unsteered, steered: :class:`mstools.GenerationOutput` (``codes [1, K, T]``, ``audio [1, C, N]``).
        readout: per-second table of both clips (``version`` = ``"unsteered"``/``"steered"``, then
            the columns of :func:`mstools.analysis.readout.per_second`), or None when there is no readout.
        readout_hook: the hook the readout was taken at.
        unsteered_cached: True when the unsteered clip came from the panel's cache.
        seconds: wall time of the run.
    """

    settings: PanelSettings
    unsteered: Any
    steered: Any
    readout: pd.DataFrame | None
    readout_hook: str | None
    unsteered_cached: bool
    seconds: float


@dataclasses.dataclass
class _Clip:
    output: Any
    readouts: dict = dataclasses.field(default_factory=dict)


def _plotly_output(fig: Any, label: str) -> dict:
    """A display_data entry for an Output widget (plotly's own mimetype; no global renderer used)."""
    import plotly.io as pio  # lazy: display libraries load when something is drawn
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    bundle["text/plain"] = f"<{label}>"
    return {"output_type": "display_data", "data": bundle, "metadata": {}}


class SteeringPanel:
    """Widgets to steer ``model`` with one of ``vectors`` and compare with the unsteered clip.

    Args:
        model: a :class:`mstools.HookedMusicGen`.
        vectors: name -> :class:`~mstools.steering.SteeringVector` made for this model.
        prompts: suggestions for the prompt box (any text can be typed); the first is the default.
        readout: what the per-second plot reads. None: the projection on the chosen vector's
            direction at the first chosen hook. ``(hook, direction_or_callable)``: a direction
            ``[D]`` or a fitted probe ``features [N, D] -> probabilities`` at ``hook``. An object
            with ``.hook`` (e.g. a :class:`mstools.analysis.directions.Direction`): read at its own hook.
            False: no readout.
        duration: clip length in seconds.
        seed, strength: initial values.
        strength_range: slider bounds (units of the mean norm).
        readout_seconds: width of a readout slice (seconds).
        max_cached: unsteered clips kept (one per ``(prompt, seed, duration)``).

    Widgets (attributes, set them from code too): ``direction`` (Dropdown), ``hooks``
    (SelectMultiple), ``strength`` (FloatSlider), ``window`` (FloatRangeSlider, seconds),
    ``branch`` (ToggleButtons), ``seed`` (IntText), ``prompt`` (Combobox), ``duration``
    (BoundedFloatText), ``generate_button``, ``progress`` (IntProgress), ``status`` (HTML),
    ``unsteered_audio`` / ``steered_audio`` (Audio), ``unsteered_spectrogram`` /
    ``steered_spectrogram`` / ``readout_plot`` (Output); ``widget`` is the whole panel.

    >>> panel = SteeringPanel(model, {"rock": rock}, prompts=["slow jazz with piano"])  # doctest: +SKIP
    >>> panel.display()                                                                # doctest: +SKIP
    """

    def __init__(self, model: Any, vectors: Mapping[str, SteeringVector],
                 prompts: Sequence[str] = ("music",), readout: Any = None, duration: float = 6.0,
                 *, seed: int = 0, strength: float = 1.0,
                 strength_range: tuple[float, float] = (-4.0, 4.0), readout_seconds: float = 1.0,
                 max_cached: int = 4):
        import ipywidgets as w  # lazy: display libraries load when something is drawn

        if not vectors:
            raise ValueError("give at least one steering vector: vectors={'name': SteeringVector}")
        for name, vec in vectors.items():
            if not isinstance(vec, SteeringVector):
                raise TypeError(f"vectors[{name!r}] must be a SteeringVector, got "
                                f"{type(vec).__name__}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("give at least one prompt suggestion")
        self.model = model
        self.vectors = dict(vectors)
        self.readout_seconds = float(readout_seconds)
        self._readout = self._check_readout(readout)
        self.max_cached = int(max_cached)
        self.result: PanelResult | None = None
        self.last_error: str | None = None
        self.last_traceback: str | None = None
        self._cache: "collections.OrderedDict[tuple, _Clip]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shown_pct = -1
        max_d = float(model.max_duration)
        step = 1.0 / float(model.frame_rate)

        first = next(iter(self.vectors))
        self.direction = w.Dropdown(options=list(self.vectors), value=first, description="vector")
        self.hooks = w.SelectMultiple(options=self.vectors[first].hooks,
                                      value=tuple(self.vectors[first].hooks), description="hooks",
                                      rows=min(6, max(2, len(self.vectors[first].hooks))))
        self.strength = w.FloatSlider(value=float(strength), min=float(strength_range[0]),
                                      max=float(strength_range[1]), step=0.05,
                                      description="strength", readout_format=".2f",
                                      tooltip="in units of the mean activation norm at the hook")
        self.duration = w.BoundedFloatText(value=float(duration), min=step, max=max_d, step=0.5,
                                           description="duration (s)")
        self.window = w.FloatRangeSlider(value=(0.0, float(duration)), min=0.0,
                                         max=float(duration), step=step, description="window (s)",
                                         readout_format=".1f")
        self.branch = w.ToggleButtons(options=list(BRANCHES), value="cond", description="branch")
        self.seed = w.IntText(value=int(seed), description="seed")
        self.prompt = w.Combobox(value=prompts[0], options=prompts, ensure_option=False,
                                 description="prompt",
                                 placeholder="a text prompt (empty: unconditional)")
        self.generate_button = w.Button(description="Generate", button_style="primary",
                                        icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=100, description="")
        self.status = w.HTML(value="Set the knobs and press Generate.")
        hidden = dict(display="none")  # shown once they hold a clip
        self.unsteered_audio = w.Audio(value=b"", format="wav", autoplay=False, loop=False,
                                       layout=hidden)
        self.steered_audio = w.Audio(value=b"", format="wav", autoplay=False, loop=False,
                                     layout=dict(hidden))
        self.unsteered_spectrogram = w.Output()
        self.steered_spectrogram = w.Output()
        self.readout_plot = w.Output()

        self.direction.observe(self._on_direction, names="value")
        self.duration.observe(self._on_duration, names="value")
        self.generate_button.on_click(lambda _: self.run(sync=False))

        units = w.HTML("<small>strength: multiples of the mean activation norm at the hook</small>")
        controls = w.VBox([self.direction, self.hooks, self.strength, units, self.window,
                           self.branch, w.HBox([self.seed, self.duration]), self.prompt,
                           w.HBox([self.generate_button, self.progress]), self.status])
        col = dict(width="50%")
        clips = w.HBox([
            w.VBox([w.HTML("<b>unsteered</b>"), self.unsteered_audio, self.unsteered_spectrogram],
                   layout=col),
            w.VBox([w.HTML("<b>steered</b>"), self.steered_audio, self.steered_spectrogram],
                   layout=col)])
        self.widget = w.VBox([controls, clips, self.readout_plot])

    # ------------------------------------------------------------------ display
    def display(self) -> None:
        """Show the panel in the notebook."""
        from IPython.display import display  # lazy: display libraries load when something is drawn
        display(self.widget)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        """The live widget, and for copies without a kernel a plain note (``text/html``)."""
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/plain"] = f"{self!r}\n{STATIC_NOTE}"
        return bundle

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display  # lazy: display libraries load when something is drawn
        # a note that only shows where the widget does not render (CSS :has hides it next to a panel)
        display(HTML("<style>.jp-OutputArea:has(.widget-vbox) .mstools-static-note,"
                     ".output_area:has(.widget-vbox) .mstools-static-note{display:none}</style>"
                     f"<div class='mstools-static-note' style='padding:.6em;border:1px dashed #999;"
                     f"color:#444'>{html.escape(STATIC_NOTE)}</div>"))
        self.display()

    def snapshot(self) -> "Snapshot":
        """The last run as static output: its settings, labelled players (unsteered and steered, same
        prompt and seed) and the per-second readout figure; it stays in a saved or exported copy of
        the notebook. Raises ValueError before the first successful run."""
        if self.result is None:
            raise ValueError("no run yet: press Generate (or call panel.run(sync=True)) first")
        return Snapshot(self.result)

    def __repr__(self) -> str:
        return (f"SteeringPanel({self.model.model_name!r}, vectors={list(self.vectors)}, "
                f"busy={self.busy})")

    # ------------------------------------------------------------------ controls
    def _check_readout(self, readout: Any) -> tuple[str, Any] | None | bool:
        if readout is None or readout is False:
            return readout
        if isinstance(readout, tuple) and len(readout) == 2 and isinstance(readout[0], str):
            hook, obj = readout
        elif isinstance(getattr(readout, "hook", None), str):
            hook, obj = readout.hook, readout
        else:
            raise TypeError("readout must be None (project on the steering vector), False (no "
                            "readout), (hook, direction_or_callable), or an object with .hook "
                            f"such as a Direction; got {type(readout).__name__}")
        self.model.check_names(hook)
        return (hook, obj)

    def _on_direction(self, change: dict) -> None:
        hooks = self.vectors[change["new"]].hooks
        self.hooks.options = hooks
        self.hooks.value = tuple(hooks)

    def _on_duration(self, change: dict) -> None:
        new, old = change["new"], change["old"]
        if not (isinstance(new, (int, float)) and math.isfinite(new) and new > 0):
            return
        t0, t1 = self.window.value
        full = t1 >= float(old) - 1e-9
        if new > self.window.max:
            self.window.max = float(new)
        else:
            self.window.value = (min(t0, new), min(t1, new))
            self.window.max = float(new)
        if full:
            self.window.value = (min(self.window.value[0], new), float(new))

    def settings(self) -> PanelSettings:
        """Read and check the controls.

        Raises:
            ValueError: an invalid value, with what to change.
        """
        name = self.direction.value
        if name not in self.vectors:
            raise ValueError(f"unknown vector {name!r}; pick one of {list(self.vectors)}")
        hooks = tuple(self.hooks.value)
        if not hooks:
            raise ValueError("pick at least one hook to steer")
        strength = float(check_strength(self.strength.value))
        duration = float(self.duration.value)
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration}")
        t0, t1 = (float(t) for t in self.window.value)
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"the time window must be finite, got ({t0}, {t1})")
        if not t0 < t1:
            raise ValueError(f"the time window is empty: start {t0:g} s must be before end {t1:g} s")
        if t0 >= duration:
            raise ValueError(f"the time window starts at {t0:g} s, after the clip's end "
                             f"({duration:g} s)")
        branch = self.branch.value
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        prompt = (self.prompt.value or "").strip() or None  # empty: unconditional generation
        return PanelSettings(vector=name, hooks=hooks, strength=strength,
                             schedule=(t0, None if t1 >= duration - 1e-9 else t1), branch=branch,
                             seed=int(self.seed.value), prompt=prompt, duration=duration)

    def steerer(self, settings: PanelSettings | None = None) -> Steerer:
        """A :class:`~mstools.steering.Steerer` set as the panel is (checked now)."""
        s = settings or self.settings()
        return Steerer(self.model).set(self.vectors[s.vector], s.strength, schedule=s.schedule,
                                       branch=s.branch, hooks=list(s.hooks))

    # ------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        """True while a run is going."""
        return self._lock.locked()

    def run(self, sync: bool = False) -> bool:
        """Generate the unsteered and steered clips with the current settings and show them.

        Args:
            sync: run in the calling thread (True) or in a background thread (False, as the
                Generate button does).

        Returns:
            False when a run was already going (this call is ignored), else True. Errors do not
            raise: they are shown in the panel and kept in ``last_error``.
        """
        if not self._lock.acquire(blocking=False):
            self._say("Still generating: this request was ignored. Wait for the current run.",
                      keep=True)
            return False
        self.generate_button.disabled = True
        if sync:
            self._work()
        else:
            self._thread = threading.Thread(target=self._work, name="mstools-steering-panel",
                                            daemon=True)
            self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run; True when none is going any more."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.busy

    def _work(self) -> None:
        start = time.perf_counter()
        self.last_error = self.last_traceback = None
        try:
            self._set_progress(0.0)
            self._say("Checking settings...")
            settings = self.settings()
            steerer = self.steerer(settings)  # checks vector, hooks, strength, window now
            readout = self._readout_for(settings)
            total = self._expected_steps(settings.duration)
            clip, cached = self._cache.get(settings.clip_key), True
            if clip is None:
                cached = False
                self._say("Generating the unsteered clip...")
                out = self.model.generate([settings.prompt], settings.duration, seed=settings.seed,
                                          noise_ids=[NOISE_ID],
                                          fwd_hooks=[self._progress_hook(0.0, 0.45, total)])
                clip = self._remember(settings.clip_key, _Clip(out))
            else:
                self._cache.move_to_end(settings.clip_key)
            self._set_progress(0.45)
            self._say("Generating the steered clip...")
            steered = steerer.generate([settings.prompt], settings.duration, seed=settings.seed,
                                       noise_ids=[NOISE_ID],
                                       fwd_hooks=[self._progress_hook(0.45, 0.9, total)])
            self._set_progress(0.9)
            self._show_clips(clip.output, steered)
            table = None
            if readout is not None:
                self._say("Reading out per second...")
                hook, obj, key = readout
                if key not in clip.readouts:
                    clip.readouts[key] = self._per_second(clip.output.codes, settings, hook, obj)
                table = pd.concat([
                    clip.readouts[key].assign(version="unsteered"),
                    self._per_second(steered.codes, settings, hook, obj).assign(version="steered"),
                ], ignore_index=True)
                table = table[["version"] + [c for c in table.columns if c != "version"]]
                self._show_readout(table, settings, hook)
            elapsed = time.perf_counter() - start
            self.result = PanelResult(settings, clip.output, steered, table,
                                      readout[0] if readout else None, cached, elapsed)
            self._set_progress(1.0)
            note = " (unsteered clip reused)" if cached else ""
            self._say(f"Done in {elapsed:.1f} s{note}: {html.escape(settings.vector)} at "
                      f"{settings.strength:g} x mean norm on {len(settings.hooks)} hook(s), "
                      f"branch {settings.branch}.")
        except Exception as e:  # shown in the panel, never raised into the kernel
            self._show_error(e)
        finally:
            self.generate_button.disabled = False
            self._lock.release()

    def _remember(self, key: tuple, clip: _Clip) -> _Clip:
        self._cache[key] = clip
        while len(self._cache) > max(1, self.max_cached):
            self._cache.popitem(last=False)
        return clip

    def _readout_for(self, s: PanelSettings) -> tuple[str, Any, tuple] | None:
        if self._readout is False:
            return None
        if self._readout is None:
            vec = self.vectors[s.vector]
            hook = next(h for h in vec.hooks if h in s.hooks)
            return hook, vec[hook].reshape(-1), ("vector", s.vector, hook)
        hook, obj = self._readout
        return hook, obj, ("custom", hook)

    def _per_second(self, codes: torch.Tensor, s: PanelSettings, hook: str, obj: Any) -> pd.DataFrame:
        return per_second(self.model, codes, [s.prompt], hook, obj, seconds=self.readout_seconds)

    def _expected_steps(self, duration: float) -> int:
        return max(1, int(round(duration * float(self.model.frame_rate))) +
                   int(self.model.num_codebooks) - 1)

    def _progress_hook(self, lo: float, hi: float, total: int) -> tuple[str, Callable]:
        """A read-only hook that moves the bar from ``lo`` to ``hi`` as generation steps pass."""
        name = "hook_embed" if "hook_embed" in self.model.hook_names else self.model.hook_names[0]

        def count(x: torch.Tensor, hook: Any) -> None:
            steps = hook.clock.steps
            done = int(steps[-1]) + 1 if len(steps) else 0
            self._set_progress(lo + (hi - lo) * min(1.0, done / total))
        return (name, count)

    # ------------------------------------------------------------------ views
    def _set_progress(self, frac: float) -> None:
        pct = int(round(100 * frac))
        if pct != self._shown_pct:
            self._shown_pct = pct
            self.progress.value = pct

    def _say(self, text: str, keep: bool = False) -> None:
        if keep:
            self.status.value = f"{self.status.value}<br><i>{html.escape(text)}</i>"
        else:
            self.status.value = text

    def _show_error(self, e: BaseException) -> None:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        if len(msg) > 600:
            msg = msg[:597] + "..."
        self.last_error = msg
        self.last_traceback = traceback.format_exc()
        self.progress.value = 0
        self._shown_pct = 0
        self.status.value = (f"<span style='color:#b00020'><b>Could not generate.</b> "
                             f"{html.escape(msg)}</span>")

    def _show_clips(self, unsteered: Any, steered: Any) -> None:
        sr = int(unsteered.sample_rate)
        self.unsteered_audio.value = wav_bytes(unsteered.audio[0], sr)
        self.steered_audio.value = wav_bytes(steered.audio[0], sr)
        self.unsteered_audio.layout.display = self.steered_audio.layout.display = None
        for out, clip, label in ((self.unsteered_spectrogram, unsteered, "unsteered"),
                                 (self.steered_spectrogram, steered, "steered")):
            fig = spectrogram(clip.audio[0], sr, title=f"{label} spectrogram")
            fig.update_layout(height=260)
            out.outputs = (_plotly_output(fig, f"{label} spectrogram"),)

    def _show_readout(self, table: pd.DataFrame, s: PanelSettings, hook: str) -> None:
        self.readout_plot.outputs = (_plotly_output(readout_figure(table, s, hook),
                                                    "per-second readout"),)


class Snapshot:
    """A panel run as static output (see :meth:`SteeringPanel.snapshot`): HTML with the settings and
    two labelled players, then the readout figure (plotly)."""

    def __init__(self, result: PanelResult):
        self.result = result

    def settings_text(self) -> str:
        s = self.result.settings
        t1 = "end" if s.schedule[1] is None else f"{s.schedule[1]:g} s"
        prompt = "(none: unconditional)" if s.prompt is None else repr(s.prompt)
        return (f"vector {s.vector} at {', '.join(s.hooks)}, strength {s.strength:g} x mean norm, window "
                f"{s.schedule[0]:g} s to {t1}, branch {s.branch}, prompt {prompt}, seed {s.seed}, "
                f"{s.duration:g} s")

    def _repr_html_(self) -> str:
        r = self.result
        sr = int(r.unsteered.sample_rate)
        p = players([("unsteered (same prompt and seed)", r.unsteered.audio[0]),
                     (f"steered toward {r.settings.vector}", r.steered.audio[0])], sr)
        return (f"<div><b>Saved panel run</b>: {html.escape(self.settings_text())}</div>"
                + p._repr_html_())

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display  # lazy: display libraries load when something is drawn
        display(HTML(self._repr_html_()))
        if self.result.readout is not None:
            display(readout_figure(self.result.readout, self.result.settings, self.result.readout_hook))

    def __repr__(self) -> str:
        return f"Snapshot({self.settings_text()})"


def readout_figure(table: pd.DataFrame, settings: PanelSettings, hook: str) -> Any:
    """Plotly lines of a per-second readout, steered (solid) vs unsteered (dashed), window shaded.

    ``table``: rows of :class:`PanelResult.readout` (columns ``version``, ``t0``, ``t1``, and
    ``value`` or class columns).
    """
    import plotly.graph_objects as go  # lazy: display libraries load when something is drawn
    skip = {"version", "clip", "second", "t0", "t1", "n_steps", "label"}
    cols = [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf"]
    fig = go.Figure()
    for i, col in enumerate(cols):
        for version, dash in (("unsteered", "dash"), ("steered", "solid")):
            if col == "value":  # one line each: grey unsteered, coloured steered
                color = "#7f7f7f" if version == "unsteered" else palette[0]
            else:  # one colour per class (genres in their fixed colours), dashed when unsteered
                color = label_color(col, cols)
            rows = table[table["version"] == version]
            mid = (rows["t0"].to_numpy() + rows["t1"].to_numpy()) / 2
            name = version if col == "value" else f"{col} ({version})"
            fig.add_trace(go.Scatter(x=mid, y=rows[col].to_numpy(), mode="lines+markers",
                                     name=name, line=dict(color=color, dash=dash)))
    t0, t1 = settings.schedule
    fig.add_vrect(x0=t0, x1=settings.duration if t1 is None else t1, fillcolor="#ffd54f",
                  opacity=0.18, line_width=0, annotation_text="steering window",
                  annotation_position="top left")
    what = "projection" if cols == ["value"] else "probability"
    fig.update_layout(title=f"per-second readout at {hook}", xaxis_title="time (s)",
                      yaxis_title=what, height=300, margin=dict(l=60, r=20, t=40, b=40),
                      xaxis=dict(range=[0, settings.duration]))
    return fig
