"""HookedMusicGen: TransformerLens hook points on MusicGen, without touching the library's code.

Each name of :mod:`mstools.core.names` is a TransformerLens ``HookPoint``. A hook point is wired
to the backend's LM (audiocraft's ``LMModel`` or transformers' ``MusicgenForCausalLM``, see
:mod:`mstools.model.backends`) by an ordinary torch hook (a *bridge*) on the module the registry names;
the bridge is attached only while the hook point has hooks, so a model with no hooks runs exactly
the library's plain code. Hooks are added in one way, :meth:`HookedMusicGen.hooks`, a context manager
that removes what it added in ``finally`` (after an exception or a KeyboardInterrupt too) and never
touches hooks it did not add (yours included).

A hook is ``fn(tensor, *, hook) -> tensor | None``. ``hook.clock`` tells where in the sequence the
current forward call is: ``hook.clock.steps`` (LongTensor [S], absolute LM input steps, taken from
the backend's own cache offset, so it is right at every generation step although each has S = 1)
and ``hook.clock.rows(branch)`` (the batch rows of the ``"cond"``/``"uncond"``/``"both"`` CFG branch).

>>> import mstools
>>> model = mstools.build_musicgen("tiny")
>>> out = model.generate(["jazz", "rock"], duration=0.5, seed=0, cache="blocks.*.hook_resid_post")
>>> tuple(out.codes.shape[:2]), out.cache.cond["blocks.0.hook_resid_post"].shape[0]
((2, 4), 2)
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mstools.core import threads
from mstools.core.errors import BadInputError
from mstools.core.names import NamesFilter, expand_names, kind_of, resolve_names, spec_for
from mstools.model.backends.audiocraft_backend import AudiocraftBackend
from mstools.model.backends.base import GENERATION_KEYS, Backend
from mstools.model.hookpoints import Bridge, BridgedHookPoint, Container, StepClock
from mstools.model.outputs import Cache, GenerationCache, GenerationOutput
from mstools.model.sampling import paired_sampling_hook

__all__ = ["HookedMusicGen", "Cache", "GenerationCache", "GenerationOutput", "StepClock",
           "ReferenceClips", "Scorer"]

#: ``() -> (codes [B, K, T], prompts)``: clips that stand for the model's usual input.
ReferenceClips = Callable[[], tuple[torch.Tensor, list]]
#: ``codes [B, K, T] -> DataFrame`` with one column per factor and ``loglik``.
Scorer = Callable[..., pd.DataFrame]


def check_generation_params(params: dict[str, Any], card: int) -> None:
    """Refuse generation parameters the samplers would misread, naming the parameter.

    >>> check_generation_params({"use_sampling": True, "temperature": 0.0, "top_k": 5}, card=32)
    Traceback (most recent call last):
    ...
    mstools.core.errors.BadInputError: temperature must be > 0 when sampling (got 0.0); for greedy decoding pass use_sampling=False
    """
    def number(key: str) -> float:
        v = params.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadInputError(f"{key} must be a finite number, got {v!r}")
        return float(v)

    if params.get("use_sampling", True):
        if number("temperature") <= 0:
            raise BadInputError(f"temperature must be > 0 when sampling (got {params['temperature']}); "
                                "for greedy decoding pass use_sampling=False")
    top_k = params.get("top_k", 0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k:
        raise BadInputError(f"top_k must be an integer >= 0 (0: no top-k restriction), got {top_k!r}")
    if top_k > card:
        raise BadInputError(f"top_k {top_k} exceeds this model's codebook size {card}")
    if not 0 <= number("top_p") <= 1:
        raise BadInputError(f"top_p must lie in [0, 1] (0: off), got {params['top_p']}")
    if number("cfg_coef") < 0:
        raise BadInputError(f"cfg_coef must be >= 0, got {params['cfg_coef']}")


class HookedMusicGen(HookedRootModule):
    """MusicGen with TransformerLens hook points (names: :data:`mstools.core.names.HOOKS`).

    Args:
        model: an ``audiocraft.models.MusicGen`` or a :class:`mstools.model.backends.Backend`
            (e.g. :class:`~mstools.model.backends.TransformersBackend`).
        name: the model's name (e.g. ``"facebook/musicgen-small"``, ``"testbed"``).
        reference_clips: ``() -> (codes, prompts)``, clips that stand for the model's usual input
            (activation norms for strength units are measured on them). Default: two clips
            generated from generic prompts.
        scorer: ``codes [B, K, T] -> DataFrame`` reading the factors of generated clips (one
            column per factor and ``loglik``): the default scorer of
            :func:`mstools.evaluation.steering`. The testbed's is its grammar
            (:func:`mstools.testbed.score`); real checkpoints have none (pass
            :func:`mstools.evaluation.readout_scorer`).

    Attributes:
        mean_norm_cache: ``{hook: mean L2 norm}`` measured on the reference clips by
            :func:`mstools.steering.mean_norms` (cleared by :meth:`clear_caches`).
        threads: CPU threads torch uses inside this model's calls (:mod:`mstools.core.threads`):
            ``"auto"`` (1 for small models such as the testbed, torch's setting for large ones),
            an integer, or None (leave torch alone).

    The same names, shapes, CFG-branch rows and step/frame/second indices in every backend.
    Main methods: :meth:`hooks` (context manager), :meth:`run_with_hooks`, :meth:`run_with_cache`
    (teacher forcing of codes ``[B, K, T]`` with text conditions), :meth:`generate` (with a step by
    step cache split by CFG branch), :meth:`encode_audio` (audio in -> codes).
    """

    def __init__(self, model: Any, name: str, *, reference_clips: ReferenceClips | None = None,
                 scorer: Scorer | None = None):
        super().__init__()
        backend = model if isinstance(model, Backend) else AudiocraftBackend(model)
        object.__setattr__(self, "backend", backend)  # not a submodule: its modules are below
        self.model_name = name
        self.lm = backend.lm
        self.num_layers = backend.num_layers
        self.d_model = backend.d_model
        self.num_heads = backend.num_heads
        self.num_codebooks = backend.num_codebooks
        self.card = backend.card
        self.special_token_id = backend.special_token_id
        self.clock = StepClock(backend.frame_rate, self.num_codebooks, backend.read_steps)

        self.hook_embed = BridgedHookPoint()
        self.blocks = nn.ModuleList()
        for _ in range(self.num_layers):
            block = Container()
            for attr in ("hook_resid_pre", "hook_attn_out", "hook_cross_attn_out", "hook_mlp_out",
                         "hook_resid_post"):
                setattr(block, attr, BridgedHookPoint())
            block.attn = Container()
            block.attn.hook_z = BridgedHookPoint()
            self.blocks.append(block)
        self.ln_final = Container()
        self.ln_final.hook_normalized = BridgedHookPoint()
        self.hook_logits = BridgedHookPoint()
        self.setup()
        self.reference_clips = reference_clips
        self.scorer = scorer
        self.mean_norm_cache: dict[str, float] = {}
        self.threads: threads.Policy = threads.default_policy()
        self._n_params = sum(p.numel() for p in self.lm.parameters())
        self._fingerprint: str | None = None

    def clear_caches(self) -> None:
        """Forget values computed from the weights (fingerprint, mean norms): call after editing them."""
        self._fingerprint = None
        self.mean_norm_cache.clear()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Register hook points (only ours: the backend's modules are left untouched)."""
        self.mod_dict, self.hook_dict = {}, {}
        modules = dict(self.lm.named_modules())
        names = []
        for name in expand_names(self.num_layers):
            spec, layer = spec_for(name)
            site = spec.site(self.backend.name)
            path = site.module.replace("{l}", str(layer)) if spec.per_layer else site.module
            target = modules.get(path)
            if target is None:  # e.g. no cross-attention (melody), no out_norm
                continue
            if site.where == "input_heads" and not isinstance(target, nn.Linear):
                continue
            point = self.get_submodule(name)
            point.name = name
            point.clock = self.clock
            point.bridge = Bridge(target, site.where, point, self.clock, self.backend.clock_module,
                                   self.num_heads, self.num_codebooks)
            self.mod_dict[name] = point
            self.hook_dict[name] = point
            names.append(name)
        self.hook_names: list[str] = names

    # ------------------------------------------------------------------ info
    @property
    def backend_name(self) -> str:
        """``"audiocraft"`` or ``"transformers"``."""
        return self.backend.name

    @property
    def musicgen(self) -> Any:
        """The audiocraft ``MusicGen`` (audiocraft backend only)."""
        if self.backend.name != "audiocraft":
            raise AttributeError(f"model.musicgen is audiocraft's MusicGen; this model runs on the "
                                 f"{self.backend.name} backend (see model.backend)")
        return self.backend.musicgen

    @property
    def compression_model(self) -> Any:
        """The audiocraft compression model (audiocraft backend only; see :meth:`decode_codes`)."""
        if self.backend.name != "audiocraft":
            raise AttributeError("model.compression_model belongs to the audiocraft backend; use "
                                 "model.encode_audio / model.decode_codes")
        return self.backend.compression_model

    @property
    def frame_rate(self) -> float:
        return float(self.backend.frame_rate)

    @property
    def sample_rate(self) -> int:
        return int(self.backend.sample_rate)

    @property
    def channels(self) -> int:
        """Audio channels of the codec (1: mono)."""
        return int(self.backend.channels)

    @property
    def max_duration(self) -> float:
        """Longest generation in seconds."""
        return float(self.backend.max_duration)

    @property
    def duration(self) -> float:
        """Default generation length in seconds."""
        return float(self.backend.defaults["duration"])

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def fingerprint(self) -> str:
        """``name:sha`` of the architecture and a sample of every weight, under audiocraft's weight
        names: it identifies the model a cache, probe or steering vector was made with, and is the
        same for the same weights in either backend."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.model_name.encode())
            state = self.backend.reference_state_dict()
            for n in sorted(state):
                p = state[n]
                flat = p.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
                h.update(f"{n}:{tuple(p.shape)}".encode())
                h.update(sample.numpy().tobytes())
            self._fingerprint = f"{self.model_name}:{h.hexdigest()[:16]}"
        return self._fingerprint

    def hook_shape(self, name: str) -> tuple[int, ...]:
        """Trailing shape (after ``[B, S]``) of the activation at ``name``."""
        self.check_names([name])
        if kind_of(name) == "attn.hook_z":
            return (self.num_heads, self.d_model // self.num_heads)
        if name == "hook_logits":
            return (self.card,)
        return (self.d_model,)

    def check_names(self, names_filter: NamesFilter) -> list[str]:
        """Resolve names/globs/predicates to hook names; unknown names raise with suggestions."""
        return resolve_names(names_filter, self.hook_names)

    def describe_hooks(self) -> list[dict[str, Any]]:
        """One row per hook point: name, layer, backend module, read/write, shape (a table)."""
        rows = []
        for name in self.hook_names:
            spec, layer = spec_for(name)
            site = spec.site(self.backend.name)
            path = site.module.replace("{l}", str(layer))
            rows.append(dict(name=name, layer=layer, module=self.backend.module_label(path),
                             where=site.where, access="read/write" if spec.writable else "read",
                             shape=spec.shape, doc=spec.doc))
        return rows

    # ------------------------------------------------------------------ hooks
    def _enable_hook(self, name, hook, dir="fwd"):
        names = self.check_names(name)
        for n in names:
            self.hook_dict[n].add_hook(hook, dir=dir, level=self.context_level)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[Any, Callable]] = (), bwd_hooks=(),
              reset_hooks_end: bool = True, clear_contexts: bool = False) -> Iterator["HookedMusicGen"]:
        """Add hooks for the duration of a ``with`` block; they are removed in ``finally``.

        ``fwd_hooks``: list of ``(name, fn)``; a name may be a glob (``'blocks.*.hook_resid_post'``),
        a list of names or a predicate. ``fn(tensor, *, hook)`` returns None (read) or a tensor
        of the same shape (write).

        >>> with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
        ...     logits = model(codes, prompts)
        """
        if bwd_hooks:
            raise NotImplementedError("backward hooks are not supported; use torch.autograd on a "
                                      "cached tensor instead")
        self.context_level += 1
        try:
            # resolve every name first: a typo adds nothing
            for name, fn in fwd_hooks:
                self.check_names(name)
                if not callable(fn):
                    raise TypeError(f"hook for {name!r} must be callable, got {type(fn).__name__}")
            for name, fn in fwd_hooks:
                self._enable_hook(name, fn)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False,
                                 level=self.context_level)
            self.context_level -= 1

    @contextlib.contextmanager
    def cfg_layout(self, batch: int | None) -> Iterator[None]:
        """Declare that forward calls inside carry ``[cond B | uncond B]`` rows (None: no CFG)."""
        old = self.clock.cfg_batch
        self.clock.cfg_batch = batch
        try:
            yield
        finally:
            self.clock.cfg_batch = old

    # ------------------------------------------------------------------ teacher forcing
    @staticmethod
    def _check_prompts(prompts: Any) -> list[str | None]:
        """Prompts as a non-empty list of strings or None (unconditional)."""
        if isinstance(prompts, str) or prompts is None:
            prompts = [prompts]
        if not isinstance(prompts, Sequence):
            raise BadInputError(f"prompts must be a string, None, or a list of them; got "
                                f"{type(prompts).__name__}")
        prompts = list(prompts)
        if not prompts:
            raise BadInputError("give at least one prompt (None for an unconditional clip)")
        bad = [(i, type(p).__name__) for i, p in enumerate(prompts) if not (p is None or isinstance(p, str))]
        if bad:
            raise BadInputError(f"prompts must be strings (or None for an unconditional clip); got "
                                f"{', '.join(f'{t} at position {i}' for i, t in bad[:3])}")
        return prompts

    def _prompts(self, prompts: Sequence[str | None] | str | None, batch: int) -> list[str | None]:
        prompts = [None] * batch if prompts is None else self._check_prompts(prompts)
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch} clips; "
                             "give one prompt per clip (None for unconditional)")
        return prompts

    def conditions(self, prompts: Sequence[str | None] | None, batch: int) -> list:
        """audiocraft ``ConditioningAttributes`` for text prompts (audiocraft backend only)."""
        prompts = self._prompts(prompts, batch)
        if not hasattr(self.backend, "conditions"):
            raise AttributeError("conditions() gives audiocraft ConditioningAttributes; this model "
                                 f"runs on the {self.backend.name} backend")
        return self.backend.conditions(prompts)

    def to_sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] -> LM input steps [B, K, T + K - 1] under the delay pattern.

        Step ``s`` holds codebook ``k`` of frame ``s - 1 - k`` (special token elsewhere). These are
        exactly the inputs the LM reads during generation of T frames.
        """
        return self.backend.to_sequence(self._check_codes(codes))

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
            raise ValueError(f"codes must be a LongTensor [B, K, T]; got "
                             f"{getattr(codes, 'shape', type(codes).__name__)}")
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks; this model has "
                             f"{self.num_codebooks} (shape must be [B, {self.num_codebooks}, T])")
        if codes.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.card):
            raise ValueError(f"codes must lie in [0, {self.card}); got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return codes.long().contiguous().to(self.device)

    def forward(self, codes: torch.Tensor, prompts: Sequence[str | None] | None = None) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            codes: LongTensor [B, K, T].
            prompts: one text per clip (None: unconditional).

        Returns:
            logits [B, K, T + K - 1, card]: step ``s`` predicts step ``s + 1`` of the delay pattern.
        """
        seq = self.to_sequence(codes)
        with self.using_threads():
            return self.backend.logits(seq, self._prompts(prompts, seq.shape[0]))

    def using_threads(self) -> Any:
        """A context that runs torch with this model's thread policy (see :attr:`threads`)."""
        return threads.using_threads(threads.resolve(self.threads, self._n_params))

    def run_with_cache(self, codes: torch.Tensor, prompts: Sequence[str | None] | None = None, *,
                       names_filter: NamesFilter = None, device: str | torch.device | None = None,
                       fwd_hooks: Sequence[tuple[Any, Callable]] = ()) -> tuple[torch.Tensor, Cache]:
        """Teacher-force ``codes`` and cache activations.

        Returns:
            (logits [B, K, S, card], :class:`Cache` name -> Tensor [B, S, ...]), S = T + K - 1.

        >>> logits, cache = model.run_with_cache(codes, prompts, names_filter="blocks.*.hook_resid_post")
        """
        names = self.check_names(names_filter)
        store: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name] = x.detach().to(device) if device else x.detach().clone()

        with self.hooks(list(fwd_hooks) + [(n, save) for n in names]):
            logits = self(codes, prompts)
        steps = torch.arange(logits.shape[2])
        return logits, Cache({n: store[n] for n in names}, steps, self.num_codebooks,
                             self.frame_rate)

    def prepare_audio(self, wav: torch.Tensor, sample_rate: int | None,
                      batch: int | None = None) -> torch.Tensor:
        """Audio ``[B, C, N]`` (or ``[C, N]``) at ``sample_rate`` -> ``[B, channels, N']`` at the
        model's rate and channel count, on its device.

        Raises:
            ValueError: no sample rate, a wrong shape, ``batch`` clips expected, or samples that are
                not finite (NaN or inf: a damaged file would otherwise give plausible codes).
        """
        if sample_rate is None:
            raise ValueError("give the audio's sample rate (audio_prompt_sample_rate=...)")
        if not isinstance(wav, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor [B, C, N], got {type(wav).__name__}")
        if wav.dim() == 2:
            wav = wav[None]
        if wav.dim() != 3:
            raise ValueError(f"audio must be [B, C, N] or [C, N], got {tuple(wav.shape)}")
        if batch is not None and wav.shape[0] != batch:
            raise ValueError(f"audio has {wav.shape[0]} clips for {batch} prompts; give one per prompt")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("audio holds NaN or infinite samples; the file is damaged or the "
                             "waveform was computed wrongly")
        # lazy: audiocraft's resampler is only needed for audio input
        from audiocraft.data.audio_utils import convert_audio
        return convert_audio(wav.float(), int(sample_rate), self.sample_rate, self.channels).to(self.device)

    def encode_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [B, C, N] (or [C, N]) at ``sample_rate`` -> codes [B, K, T] via the codec."""
        return self.backend.encode_audio(self.prepare_audio(wav, sample_rate))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] -> audio [B, C, N]."""
        return self.backend.decode_codes(self._check_codes(codes))

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str | None] | str, duration: float, *, seed: int | None = 0,
                 cache: NamesFilter | bool = None, cache_uncond: bool = True,
                 fwd_hooks: Sequence[tuple[Any, Callable]] = (), audio_prompt: torch.Tensor | None = None,
                 audio_prompt_sample_rate: int | None = None, progress: bool = False,
                 decode: bool = True, noise_ids: Sequence[int] | None = None,
                 **generation_params: Any) -> GenerationOutput:
        """Generate music with the backend's own sampler; optionally cache activations step by step.

        Args:
            prompts: text prompts (one clip each; None = unconditional).
            duration: seconds of audio (including an audio prompt, if any).
            seed: ``torch.manual_seed`` before sampling (None: leave the RNG alone).
            cache: hook names/globs to record (True: all). Recorded per step, stitched to [B, S, ...],
                split into ``cond``/``uncond`` (CFG) branches.
            fwd_hooks: extra ``(name, fn)`` hooks for this call (steering uses this).
            audio_prompt: waveform [B, C, N] to continue (the seed paper's genre-fusion setting).
            progress: show a progress bar.
            decode: decode the codes to audio (False: ``audio`` is empty).
            noise_ids: one integer per clip for **paired sampling** (:mod:`mstools.model.sampling`):
                a clip's random numbers depend only on ``(seed, noise id, step)``, not on its place in
                the batch, so clips with the same id and seed are paired (e.g. steered vs unsteered).
                Same distribution as the backend's sampler. None: the backend's own sampler.
            **generation_params: audiocraft's names in both backends: ``cfg_coef``, ``top_k``,
                ``top_p``, ``temperature``, ``use_sampling`` (defaults: the model's).

        Returns:
            :class:`GenerationOutput` with ``codes [B, K, T]``, ``audio [B, C, N]``, ``sample_rate``,
            and ``cache`` when asked.
        """
        prompts = self._check_prompts(prompts)
        if isinstance(duration, bool) or not (isinstance(duration, (int, float)) and math.isfinite(duration)
                                              and duration > 0):
            raise BadInputError(f"duration must be a positive number of seconds, got {duration!r}")
        if duration < 1 / self.frame_rate:
            raise BadInputError(f"duration {duration} s is shorter than one frame of this model "
                                f"(1 / {self.frame_rate:g} s); ask for at least {1 / self.frame_rate:g} s")
        if duration > self.max_duration:
            raise BadInputError(f"duration {duration} s exceeds this model's max_duration "
                                f"{self.max_duration} s")
        unknown = sorted(set(generation_params) - set(GENERATION_KEYS))
        if unknown:
            raise TypeError(f"unknown generation parameter(s) {unknown}; known: {list(GENERATION_KEYS)}")
        params = {k: v for k, v in self.backend.defaults.items() if k != "duration"}
        params.update(generation_params)
        check_generation_params(params, self.card)
        if params.get("two_step_cfg"):
            raise ValueError("two_step_cfg is not supported: steering and caching need the "
                             "batched [cond | uncond] layout")
        paired: list[tuple[Any, Callable]] = []
        if noise_ids is not None:
            noise_ids = [int(i) for i in noise_ids]
            if len(noise_ids) != len(prompts):
                raise ValueError(f"got {len(noise_ids)} noise ids for {len(prompts)} prompts; give one "
                                 "per clip")
            if params.get("use_sampling", True) and float(params.get("temperature", 1.0)) > 0:
                paired.append(("hook_logits", paired_sampling_hook(
                    0 if seed is None else int(seed), noise_ids,
                    temperature=float(params["temperature"]), top_k=int(params.get("top_k") or 0),
                    top_p=float(params.get("top_p") or 0.0), cfg_coef=float(params["cfg_coef"]))))
                params["use_sampling"] = False  # the hook samples; the backend takes the argmax
        names = [] if cache in (None, False) else self.check_names(None if cache is True else cache)
        steps_seen: list[torch.Tensor] = []
        store: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name].append(x.detach().clone())

        def mark_steps(x: torch.Tensor, hook: HookPoint) -> None:
            steps_seen.append(hook.clock.steps.clone())

        hooks = list(fwd_hooks) + paired + [(n, save) for n in names]
        if names:
            hooks.append((names[0], mark_steps))
        batch = len(prompts)
        prompt_audio = None
        if audio_prompt is not None:
            wav = self.prepare_audio(audio_prompt, audio_prompt_sample_rate, batch)
            prompt_audio = (wav, self.sample_rate)
        bar = on_progress = None
        if progress:
            from tqdm.auto import tqdm  # lazy: only for progress bars
            bar = tqdm(total=int(duration * self.frame_rate), desc="generate", unit="step")

            def on_progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()
        try:
            if seed is not None:
                torch.manual_seed(seed)
            # both backends run [cond | uncond] rows in one batch under guidance
            with self.hooks(hooks), self.cfg_layout(batch), self.using_threads():
                codes, audio = self.backend.generate(prompts, float(duration), params,
                                                     audio_prompt=prompt_audio, decode=decode,
                                                     progress=on_progress)
        finally:
            if bar is not None:
                bar.close()
        gen_cache = None
        if names:
            steps = torch.cat(steps_seen) if steps_seen else torch.zeros(0, dtype=torch.long)
            # steps run along dim 1 ([B, S, ...]), dim 2 for logits ([B, K, S, card])
            stitched = {n: torch.cat(v, dim=2 if n == "hook_logits" else 1) for n, v in store.items()}
            two = any(v.shape[0] == 2 * batch for v in stitched.values())
            cond = Cache({n: v[:batch] for n, v in stitched.items()}, steps, self.num_codebooks,
                         self.frame_rate, "cond")
            unc = None
            if two and cache_uncond:
                unc = Cache({n: v[batch:] for n, v in stitched.items()}, steps,
                            self.num_codebooks, self.frame_rate, "uncond")
            gen_cache = GenerationCache(cond, unc)
        return GenerationOutput(codes=codes, audio=audio, sample_rate=self.sample_rate,
                                prompts=prompts, seed=seed, cache=gen_cache)

    def __repr__(self) -> str:
        return (f"HookedMusicGen({self.model_name!r} on {self.backend.name}: {self.num_layers} "
                f"layers, d_model "
                f"{self.d_model}, {self.num_heads} heads, {self.num_codebooks} codebooks x "
                f"{self.card}, {self.frame_rate:g} frames/s, {len(self.hook_names)} hook points)")
