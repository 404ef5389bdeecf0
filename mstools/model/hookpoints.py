"""Hook points wired to a backend's modules by ordinary torch hooks, and the step clock.

A :class:`BridgedHookPoint` is a TransformerLens ``HookPoint`` whose *bridge* (:class:`Bridge`) is
a torch hook on the backend module the registry names (:mod:`mstools.core.names`); the bridge is
attached only while the point has hooks, so a model with no hooks runs the library's plain code.
The :class:`StepClock` tells a hook where in the sequence the current forward call is: absolute LM
input steps read from the backend's own cache offset (every generation step has length 1) and the
rows of each classifier-free-guidance branch.

>>> clock = StepClock(frame_rate=10.0, num_codebooks=4)
>>> clock.cfg_batch = 2
>>> clock.rows("uncond", 4), clock.rows("cond", 3)
(slice(2, 4, None), slice(0, 3, None))
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from mstools.core.errors import MstoolsError
from mstools.core.timeline import seconds_of_step

__all__ = ["StepClock", "Bridge", "BridgedHookPoint", "Container", "Branch", "HookOutputError",
           "check_hook_output"]

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


class Bridge:
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


class HookOutputError(MstoolsError, TypeError):
    """A hook returned something that cannot replace the activation (names the hook point and
    the function, and says what is expected)."""


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def check_hook_output(out: Any, x: torch.Tensor, point: str, fn: Callable) -> torch.Tensor:
    """``out`` if it can replace activation ``x`` at ``point``: a tensor of the same shape, dtype
    and device; else :class:`HookOutputError` naming the hook and what would work.

    >>> x = torch.zeros(2, 3)
    >>> check_hook_output(x[:1], x, "blocks.0.hook_resid_post", len)
    Traceback (most recent call last):
    ...
    mstools.model.hookpoints.HookOutputError: hook len at 'blocks.0.hook_resid_post' returned shape (1, 3); it must return a tensor of the activation's shape (2, 3) (or None to leave it unchanged)
    """
    where = f"hook {_fn_name(fn)} at {point!r}"
    if not isinstance(out, torch.Tensor):
        raise HookOutputError(f"{where} returned a {type(out).__module__}.{type(out).__name__}; it must "
                              f"return a torch.Tensor of shape {tuple(x.shape)} (or None to leave the "
                              f"activation unchanged)")
    if out.shape != x.shape:
        raise HookOutputError(f"{where} returned shape {tuple(out.shape)}; it must return a tensor of "
                              f"the activation's shape {tuple(x.shape)} (or None to leave it unchanged)")
    if out.dtype != x.dtype:
        raise HookOutputError(f"{where} returned dtype {out.dtype}; the activation is {x.dtype} "
                              f"(cast with .to(x.dtype))")
    if out.device != x.device:
        raise HookOutputError(f"{where} returned a tensor on {out.device}; the activation is on "
                              f"{x.device} (move it with .to(x.device))")
    return out


class BridgedHookPoint(HookPoint):
    """A HookPoint whose bridge to audiocraft is attached only while it has hooks.

    Every hook's return value is checked before it replaces the activation
    (:func:`check_hook_output`): a wrong shape, dtype, device or type fails at once, naming the hook.
    """

    bridge: Bridge | None = None
    clock: StepClock | None = None

    def add_hook(self, hook, dir="fwd", is_permanent=False, level=None, prepend=False,
                 alias_names=None):
        if dir != "fwd":
            raise NotImplementedError("mstools hook points support forward hooks only")
        user = hook

        def checked(x: torch.Tensor, hook: Any) -> Any:
            out = user(x, hook=hook)
            return None if out is None else check_hook_output(out, x, hook.name, user)

        handle = super().add_hook(checked, dir=dir, is_permanent=is_permanent, level=level,
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


class Container(nn.Module):
    """Holds hook points so that their module paths are their TransformerLens names."""


