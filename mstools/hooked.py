"""HookedMusicGen: TransformerLens hook points on MusicGen, without touching the library's code.

Each name of :mod:`mstools.hook_registry` is a TransformerLens ``HookPoint``. A hook point is wired
to the backend's LM (audiocraft's ``LMModel`` or transformers' ``MusicgenForCausalLM``, see
:mod:`mstools.backends`) by an ordinary torch hook (a *bridge*) on the module the registry names;
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
>>> out.codes.shape[:2], out.cache.cond["blocks.0.hook_resid_post"].shape[0]
((2, 4), 2)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from .hook_registry import (NamesFilter, expand_names,
                            resolve_names, spec_for)
from .timeline import seconds_of_step

__all__ = ["HookedMusicGen", "Cache", "GenerationCache", "GenerationOutput", "StepClock"]

Branch = str  # "cond" | "uncond" | "both"


class StepClock:
    """Where the current forward call is: absolute input steps and CFG layout.

    ``steps`` is read by a pre-hook on the backend's transformer, before any layer runs, from the
    backend's own state (audiocraft's streaming offset, transformers' key/value cache length);
    under teacher forcing it is ``arange(S)``.
    """

    def __init__(self, frame_rate: float, num_codebooks: int,
                 reader: Callable[[nn.Module, tuple, dict], tuple[int, int]] | None = None):
        self.frame_rate = float(frame_rate)
        self.num_codebooks = int(num_codebooks)
        self.steps: torch.Tensor = torch.zeros(0, dtype=torch.long)
        self.cfg_batch: int | None = None  # B when rows are [cond B | uncond B]
        self._reader = reader
        self._users = 0
        self._handle: Any = None

    @property
    def seconds(self) -> torch.Tensor:
        """Seconds of each position of the current call: ``steps / frame_rate`` (float [S])."""
        return seconds_of_step(self.steps.to(torch.float64), self.frame_rate)

    def rows(self, branch: Branch, batch: int) -> slice:
        """Rows of ``branch`` in a batch of ``batch`` rows.

        Outside classifier-free guidance every row is conditional: ``"cond"`` and ``"both"`` select
        all rows and ``"uncond"`` selects none.
        """
        if branch not in ("cond", "uncond", "both"):
            raise ValueError(f"branch must be 'cond', 'uncond' or 'both', got {branch!r}")
        if branch == "both":
            return slice(0, batch)
        b = self.cfg_batch
        if b is None or batch != 2 * b:
            return slice(0, batch) if branch == "cond" else slice(0, 0)
        return slice(0, b) if branch == "cond" else slice(b, 2 * b)

    def _read(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        start, length = self._reader(module, args, kwargs)
        self.steps = torch.arange(start, start + length)

    def _acquire(self, transformer: nn.Module) -> None:
        if self._users == 0:
            self._handle = transformer.register_forward_pre_hook(self._read, with_kwargs=True)
        self._users += 1

    def _release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._handle is not None:
            self._handle.remove()
            self._handle = None


class _Bridge:
    """Torch hook(s) on a backend module that route one activation through a HookPoint.

    ``site.where`` says which value: a module's output (the first element of a tuple output), its
    first input, its input split into heads, the sum of K embedding tables' outputs, or logits
    returned flat as ``[B*K, S, card]``.
    """

    def __init__(self, module: nn.Module, where: str, point: HookPoint, clock: StepClock,
                 transformer: nn.Module, num_heads: int, num_codebooks: int):
        self.module, self.where, self.point, self.clock = module, where, point, clock
        self.transformer, self.num_heads, self.num_codebooks = transformer, num_heads, num_codebooks
        self.handles: list[Any] = []
        self._parts: list[torch.Tensor] = []

    @property
    def handle(self) -> Any:
        return self.handles[0] if self.handles else None

    def attach(self) -> None:
        if self.handles:
            return
        self.clock._acquire(self.transformer)
        try:
            if self.where in ("output", "logits_flat"):
                fn = self._on_output if self.where == "output" else self._on_flat_logits
                self.handles.append(self.module.register_forward_hook(fn))
            elif self.where == "input":
                self.handles.append(self.module.register_forward_pre_hook(self._on_input))
            elif self.where == "input_heads":
                self.handles.append(self.module.register_forward_pre_hook(self._on_input_heads))
            elif self.where == "embed_sum":
                last = len(self.module) - 1
                for i, table in enumerate(self.module):
                    fn = self._on_last_table if i == last else self._on_table
                    self.handles.append(table.register_forward_hook(fn))
            else:
                raise ValueError(f"unknown hook site kind {self.where!r}")
        except BaseException:
            self._remove_handles()
            self.clock._release()
            raise

    def _remove_handles(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self._parts = []

    def detach(self) -> None:
        if not self.handles:
            return
        self._remove_handles()
        self.clock._release()

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self.point(output[0]),) + tuple(output[1:])
        return self.point(output)

    def _on_flat_logits(self, module: nn.Module, args: tuple, output: Any) -> Any:
        flat = output.logits
        k = self.num_codebooks
        new = self.point(flat.reshape(flat.shape[0] // k, k, *flat.shape[1:]))
        output.logits = new.reshape(flat.shape)
        return output

    def _on_input(self, module: nn.Module, args: tuple) -> tuple:
        return (self.point(args[0]),) + tuple(args[1:])

    def _on_input_heads(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        b, s, d = x.shape
        z = self.point(x.reshape(b, s, self.num_heads, d // self.num_heads))
        return (z.reshape(b, s, d),) + tuple(args[1:])

    def _on_table(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._parts.append(output)

    def _on_last_table(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        # the model computes e_0 + e_1 + ... + e_{K-1} in this order: so does the total, bit for bit
        parts, self._parts = self._parts + [output], []
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        before = total.clone()
        new = self.point(total)
        if new is total and torch.equal(new, before):
            return None
        return output + (new - before)


class BridgedHookPoint(HookPoint):
    """A HookPoint whose bridge to audiocraft is attached only while it has hooks."""

    bridge: _Bridge | None = None
    clock: StepClock | None = None

    def add_hook(self, hook, dir="fwd", is_permanent=False, level=None, prepend=False,
                 alias_names=None):
        if dir != "fwd":
            raise NotImplementedError("mstools hook points support forward hooks only")
        handle = super().add_hook(hook, dir=dir, is_permanent=is_permanent, level=level,
                                  prepend=prepend, alias_names=alias_names)
        try:
            if self.bridge is not None:
                self.bridge.attach()
        except BaseException:
            self.remove_hooks("fwd", including_permanent=True, level=level)
            raise
        return handle

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None):
        super().remove_hooks(dir, including_permanent=including_permanent, level=level)
        if not self.fwd_hooks and self.bridge is not None:
            self.bridge.detach()


class _Container(nn.Module):
    """Holds hook points so that their module paths are their TransformerLens names."""


class Cache(dict):
    """Cached activations of one CFG branch: ``name -> Tensor [B, S, ...]`` with their positions.

    Attributes:
        steps: LongTensor [S], absolute LM input step of each position.
        num_codebooks, frame_rate: to map steps to frames and seconds (see :mod:`mstools.timeline`).
        branch: ``"cond"`` or ``"uncond"``.
    """

    def __init__(self, acts: dict[str, torch.Tensor], steps: torch.Tensor, num_codebooks: int,
                 frame_rate: float, branch: str = "cond"):
        super().__init__(acts)
        self.steps = steps
        self.num_codebooks = num_codebooks
        self.frame_rate = frame_rate
        self.branch = branch

    @property
    def seconds(self) -> torch.Tensor:
        """Float [S]: time of each position, ``steps / frame_rate``."""
        return self.steps.to(torch.float64) / self.frame_rate

    @property
    def frames(self) -> torch.Tensor:
        """Long [S]: frame completed at each position (``step - K + 1``; < 0 before frame 0)."""
        return self.steps - self.num_codebooks + 1

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self.items())[:3])
        more = f", ... ({len(self)} hooks)" if len(self) > 3 else ""
        return f"Cache[{self.branch}]({shapes}{more}; steps {len(self.steps)})"


@dataclasses.dataclass
class GenerationCache:
    """Activations recorded step by step during generation, stitched along S, split by CFG branch."""

    cond: Cache
    uncond: Cache | None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cond[name]

    @property
    def steps(self) -> torch.Tensor:
        return self.cond.steps


@dataclasses.dataclass
class GenerationOutput:
    """What :meth:`HookedMusicGen.generate` returns.

    Attributes:
        codes: LongTensor [B, K, T] (audio prompt frames included when continuing a clip).
        audio: Tensor [B, C, N] at ``sample_rate``.
        sample_rate: audio sample rate (Hz).
        prompts: the text prompts.
        seed: the seed used.
        cache: :class:`GenerationCache` when ``cache=`` was asked for, else None.
    """

    codes: torch.Tensor
    audio: torch.Tensor
    sample_rate: int
    prompts: list[str | None]
    seed: int | None
    cache: GenerationCache | None = None


class HookedMusicGen(HookedRootModule):
    """MusicGen with TransformerLens hook points (names: :data:`mstools.hook_registry.HOOKS`).

    Args:
        model: an ``audiocraft.models.MusicGen`` or a :class:`mstools.backends.Backend`
            (e.g. :class:`~mstools.backends.TransformersBackend`).
        name: the model's name (e.g. ``"facebook/musicgen-small"``, ``"testbed"``).

    The same names, shapes, CFG-branch rows and step/frame/second indices in every backend.
    Main methods: :meth:`hooks` (context manager), :meth:`run_with_hooks`, :meth:`run_with_cache`
    (teacher forcing of codes ``[B, K, T]`` with text conditions), :meth:`generate` (with a step by
    step cache split by CFG branch), :meth:`encode_audio` (audio in -> codes).
    """

    def __init__(self, model: Any, name: str):
        super().__init__()
        from .backends.audiocraft_backend import AudiocraftBackend
        from .backends.base import Backend
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
            block = _Container()
            for attr in ("hook_resid_pre", "hook_attn_out", "hook_cross_attn_out", "hook_mlp_out",
                         "hook_resid_post"):
                setattr(block, attr, BridgedHookPoint())
            block.attn = _Container()
            block.attn.hook_z = BridgedHookPoint()
            self.blocks.append(block)
        self.ln_final = _Container()
        self.ln_final.hook_normalized = BridgedHookPoint()
        self.hook_logits = BridgedHookPoint()
        self.setup()
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Register hook points (only ours: the backend's modules are left untouched)."""
        self.mod_dict, self.hook_dict = {}, {}
        modules = dict(self.lm.named_modules())
        names = []
        for name in expand_names(self.num_layers):
            spec, _ = spec_for(name)
            site = spec.site(self.backend.name)
            path = site.module.replace("{l}", name.split(".")[1]) if spec.per_layer else site.module
            target = modules.get(path)
            if target is None:  # e.g. no cross-attention (melody), no out_norm
                continue
            if site.where == "input_heads" and not isinstance(target, nn.Linear):
                continue
            point = self.get_submodule(name)
            point.name = name
            point.clock = self.clock
            point.bridge = _Bridge(target, site.where, point, self.clock, self.backend.clock_module,
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
        if name.endswith("attn.hook_z"):
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
        ...     logits = model(codes, ["jazz"])
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
    def _prompts(self, prompts: Sequence[str | None] | str | None, batch: int) -> list[str | None]:
        if prompts is None:
            prompts = [None] * batch
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
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
        return codes.long().to(self.device)

    def forward(self, codes: torch.Tensor, prompts: Sequence[str | None] | None = None) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            codes: LongTensor [B, K, T].
            prompts: one text per clip (None: unconditional).

        Returns:
            logits [B, K, T + K - 1, card]: step ``s`` predicts step ``s + 1`` of the delay pattern.
        """
        seq = self.to_sequence(codes)
        return self.backend.logits(seq, self._prompts(prompts, seq.shape[0]))

    def run_with_cache(self, codes: torch.Tensor, prompts: Sequence[str | None] | None = None, *,
                       names_filter: NamesFilter = None, device: str | torch.device | None = None,
                       fwd_hooks: Sequence[tuple[Any, Callable]] = ()) -> tuple[torch.Tensor, Cache]:
        """Teacher-force ``codes`` and cache activations.

        Returns:
            (logits [B, K, S, card], :class:`Cache` name -> Tensor [B, S, ...]), S = T + K - 1.

        >>> logits, cache = model.run_with_cache(codes, ["jazz"], names_filter="blocks.*.hook_resid_post")
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

    def _convert_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        from audiocraft.data.audio_utils import convert_audio
        if wav.dim() == 2:
            wav = wav[None]
        if wav.dim() != 3:
            raise ValueError(f"audio must be [B, C, N] or [C, N], got {tuple(wav.shape)}")
        return convert_audio(wav.float(), sample_rate, self.sample_rate, self.channels).to(self.device)

    def encode_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [B, C, N] (or [C, N]) at ``sample_rate`` -> codes [B, K, T] via the codec."""
        return self.backend.encode_audio(self._convert_audio(wav, sample_rate))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] -> audio [B, C, N]."""
        return self.backend.decode_codes(self._check_codes(codes))

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str | None] | str, duration: float, *, seed: int | None = 0,
                 cache: NamesFilter | bool = None, cache_uncond: bool = True,
                 fwd_hooks: Sequence[tuple[Any, Callable]] = (), audio_prompt: torch.Tensor | None = None,
                 audio_prompt_sample_rate: int | None = None, progress: bool = False,
                 decode: bool = True, **generation_params: Any) -> GenerationOutput:
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
            **generation_params: audiocraft's names in both backends: ``cfg_coef``, ``top_k``,
                ``top_p``, ``temperature``, ``use_sampling`` (defaults: the model's).

        Returns:
            :class:`GenerationOutput` with ``codes [B, K, T]``, ``audio [B, C, N]``, ``sample_rate``,
            and ``cache`` when asked.
        """
        from .backends.base import GENERATION_KEYS
        if isinstance(prompts, str) or prompts is None:
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("give at least one prompt (None for an unconditional clip)")
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        if duration > self.max_duration:
            raise ValueError(f"duration {duration} s exceeds this model's max_duration "
                             f"{self.max_duration} s")
        unknown = sorted(set(generation_params) - set(GENERATION_KEYS))
        if unknown:
            raise TypeError(f"unknown generation parameter(s) {unknown}; known: {list(GENERATION_KEYS)}")
        params = {k: v for k, v in self.backend.defaults.items() if k != "duration"}
        params.update(generation_params)
        if params.get("two_step_cfg"):
            raise ValueError("two_step_cfg is not supported: steering and caching need the "
                             "batched [cond | uncond] layout")
        names = [] if cache in (None, False) else self.check_names(None if cache is True else cache)
        steps_seen: list[torch.Tensor] = []
        store: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name].append(x.detach().clone())

        def mark_steps(x: torch.Tensor, hook: HookPoint) -> None:
            steps_seen.append(hook.clock.steps.clone())

        hooks = list(fwd_hooks) + [(n, save) for n in names]
        if names:
            hooks.append((names[0], mark_steps))
        batch = len(prompts)
        prompt_audio = None
        if audio_prompt is not None:
            if audio_prompt_sample_rate is None:
                raise ValueError("give audio_prompt_sample_rate with audio_prompt")
            wav = self._convert_audio(audio_prompt, audio_prompt_sample_rate)
            if wav.shape[0] != batch:
                raise ValueError(f"audio_prompt has {wav.shape[0]} clips for {batch} prompts")
            prompt_audio = (wav, self.sample_rate)
        bar = on_progress = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=int(duration * self.frame_rate), desc="generate", unit="step")

            def on_progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()
        try:
            if seed is not None:
                torch.manual_seed(seed)
            # both backends run [cond | uncond] rows in one batch under guidance
            with self.hooks(hooks), self.cfg_layout(batch):
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
