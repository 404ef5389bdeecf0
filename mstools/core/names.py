"""The one registry of hook names: what each hook carries and where it sits in each backend.

Names follow TransformerLens. Each entry is data: the module it attaches to in each backend (a path
inside audiocraft's ``LMModel`` and inside transformers' ``MusicgenForCausalLM``), whether the
activation is that module's input or output, whether a hook may rewrite it, and its shape. MusicGen
is pre-norm: in audiocraft each ``StreamingTransformerLayer`` has identity modules ``layer_scale_1`` /
``layer_scale_cross`` / ``layer_scale_2`` exactly where self-attention, cross-attention and the MLP
write into the residual stream; in transformers the same three values are the outputs of
``self_attn``, ``encoder_attn`` and ``fc2``. The hooks attach there with ordinary torch hooks,
never by copying either library's code. A name means the same tensor in both backends.

Shapes use B = batch (2B under classifier-free guidance: rows ``[:B]`` conditional), S = LM
sequence steps (1 per generation step), D = model width, H = heads, K = codebooks, card = codebook
cardinality.

>>> from mstools.core.names import expand_names, HOOKS
>>> expand_names(num_layers=2)[:4]
['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.hook_attn_out', 'blocks.0.hook_cross_attn_out']
>>> HOOKS["blocks.{l}.attn.hook_z"].shape
'[B, S, H, D/H]'
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

from mstools.core.errors import MstoolsError

__all__ = ["HookSpec", "Site", "BACKENDS", "HOOKS", "STEERABLE", "expand_names", "spec_for",
           "parse_name", "layer_of", "kind_of", "resolve_names", "UnknownHookError", "NamesFilter"]

Where = Literal["input", "output", "input_heads", "embed_sum", "logits_flat"]

#: Model families whose modules the registry knows.
BACKENDS = ("audiocraft", "transformers")


@dataclass(frozen=True)
class Site:
    """Where a hook attaches in one backend's module tree.

    Attributes:
        module: module path inside the backend's LM (``""`` = the LM itself).
        where: ``"output"`` (module output; the first element when the module returns a tuple),
            ``"input"`` (first positional input), ``"input_heads"`` (input split into heads:
            ``[B, S, D] -> [B, S, H, D/H]``), ``"embed_sum"`` (the sum of the outputs of the K
            embedding tables in the ModuleList at ``module``) or ``"logits_flat"`` (logits
            returned as ``[B*K, S, card]`` in a ModelOutput, seen as ``[B, K, S, card]``).
    """

    module: str
    where: Where


@dataclass(frozen=True)
class HookSpec:
    """One hook point, and where it attaches in each backend.

    Attributes:
        name: TransformerLens-style template (``{l}`` = layer index).
        sites: backend name -> :class:`Site`.
        writable: whether a hook's return value replaces the activation.
        shape: shape of the tensor the hook receives (the same in every backend).
        doc: what the activation is.
    """

    name: str
    sites: dict
    writable: bool
    shape: str
    doc: str

    @property
    def per_layer(self) -> bool:
        return "{l}" in self.name

    def site(self, backend: str) -> Site:
        """The :class:`Site` of this hook in ``backend`` (``"audiocraft"`` or ``"transformers"``)."""
        if backend not in self.sites:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        return self.sites[backend]

    @property
    def module(self) -> str:
        """audiocraft module path (kept for reading the table)."""
        return self.sites["audiocraft"].module

    @property
    def where(self) -> Where:
        return self.sites["audiocraft"].where


def _spec(name: str, audiocraft: tuple[str, Where], transformers: tuple[str, Where], shape: str,
          doc: str, writable: bool = True) -> HookSpec:
    return HookSpec(name, {"audiocraft": Site(*audiocraft), "transformers": Site(*transformers)},
                    writable, shape, doc)


# audiocraft: paths inside ``audiocraft.models.lm.LMModel``. Each ``StreamingTransformerLayer`` has
# identity modules ``layer_scale_1`` / ``layer_scale_cross`` / ``layer_scale_2`` exactly where
# self-attention, cross-attention and the MLP write into the residual stream.
# transformers: paths inside ``MusicgenForCausalLM`` (``MusicgenForConditionalGeneration.decoder``).
# ``MusicgenDecoderLayer`` adds ``self_attn`` / ``encoder_attn`` outputs (tuples: output, weights)
# and ``fc2``'s output to the residual stream; dropout between them is the identity in eval mode.
_L_AC, _L_HF = "transformer.layers.{l}", "model.decoder.layers.{l}"
_SPECS = [
    _spec("hook_embed", ("transformer", "input"), ("model.decoder.embed_tokens", "embed_sum"),
          "[B, S, D]", "sum of the K codebook embeddings (input of the transformer, before positions)"),
    _spec("blocks.{l}.hook_resid_pre", (_L_AC, "input"), (_L_HF, "input"), "[B, S, D]",
          "residual stream entering layer l"),
    _spec("blocks.{l}.hook_attn_out", (_L_AC + ".layer_scale_1", "output"),
          (_L_HF + ".self_attn", "output"), "[B, S, D]",
          "self-attention output written into the residual stream"),
    _spec("blocks.{l}.hook_cross_attn_out", (_L_AC + ".layer_scale_cross", "output"),
          (_L_HF + ".encoder_attn", "output"), "[B, S, D]",
          "cross-attention (text condition) output written into the residual"),
    _spec("blocks.{l}.hook_mlp_out", (_L_AC + ".layer_scale_2", "output"),
          (_L_HF + ".fc2", "output"), "[B, S, D]", "MLP output written into the residual stream"),
    _spec("blocks.{l}.hook_resid_post", (_L_AC, "output"), (_L_HF, "output"), "[B, S, D]",
          "residual stream leaving layer l"),
    _spec("blocks.{l}.attn.hook_z", (_L_AC + ".self_attn.out_proj", "input_heads"),
          (_L_HF + ".self_attn.out_proj", "input_heads"), "[B, S, H, D/H]",
          "per-head self-attention output before the output projection"),
    _spec("ln_final.hook_normalized", ("out_norm", "output"), ("model.decoder.layer_norm", "output"),
          "[B, S, D]", "final layer norm output, read by the K output heads"),
    _spec("hook_logits", ("", "output"), ("", "logits_flat"), "[B, K, S, card]",
          "logits of the K codebooks"),
]

HOOKS: dict[str, HookSpec] = {s.name: s for s in _SPECS}

#: Hooks a steering vector may be added to (activations written into or carried by the residual).
STEERABLE = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_cross_attn_out",
             "hook_mlp_out", "attn.hook_z")


class UnknownHookError(MstoolsError, KeyError):
    """A hook name that the model does not have. The message suggests the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def expand_names(num_layers: int) -> list[str]:
    """All concrete hook names of a model with ``num_layers`` layers, in forward order."""
    names = ["hook_embed"]
    for layer in range(num_layers):
        for s in _SPECS:
            if s.per_layer:
                names.append(s.name.format(l=layer))
    names += ["ln_final.hook_normalized", "hook_logits"]
    return names


def parse_name(name: str) -> tuple[str, int | None]:
    """The one parser of hook names: ``(template, layer)``, layer None for model-level hooks.

    Accepts any name of the form ``blocks.{l}.<rest>`` or a model-level name; does not check that
    the template is known (see :func:`spec_for`).

    >>> parse_name("blocks.3.attn.hook_z"), parse_name("hook_embed")
    (('blocks.{l}.attn.hook_z', 3), ('hook_embed', None))
    """
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        return ".".join(["blocks", "{l}"] + parts[2:]), int(parts[1])
    return name, None


def spec_for(name: str) -> tuple[HookSpec, int | None]:
    """The spec of a concrete name and its layer (None for model-level hooks).

    >>> spec_for("blocks.3.hook_mlp_out")[1]
    3
    """
    template, layer = parse_name(name)
    if template in HOOKS and HOOKS[template].per_layer == (layer is not None):
        return HOOKS[template], layer
    raise UnknownHookError(f"unknown hook name {name!r}")


def layer_of(name: str) -> int:
    """Layer index of a hook name, -1 for model-level hooks (``hook_embed``, ``hook_logits``).

    >>> layer_of("blocks.12.hook_resid_post"), layer_of("hook_embed")
    (12, -1)
    """
    layer = parse_name(name)[1]
    return -1 if layer is None else layer


def kind_of(name: str) -> str:
    """What a hook carries, without its layer: ``"hook_resid_post"``, ``"attn.hook_z"``, ...

    >>> kind_of("blocks.2.attn.hook_z"), kind_of("ln_final.hook_normalized")
    ('attn.hook_z', 'ln_final.hook_normalized')
    """
    template, layer = parse_name(name)
    return template[len("blocks.{l}."):] if layer is not None else template


NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


def resolve_names(names_filter: NamesFilter, available: Sequence[str]) -> list[str]:
    """Concrete names selected by a filter: a name, a glob (``'blocks.*.hook_resid_post'``), a list of
    those, a predicate, or None (all). Unknown names raise :class:`UnknownHookError` with suggestions.

    >>> resolve_names("blocks.*.hook_resid_post", expand_names(2))
    ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    if names_filter is None:
        return list(available)
    if callable(names_filter):
        return [n for n in available if names_filter(n)]
    patterns: Iterable[str] = [names_filter] if isinstance(names_filter, str) else names_filter
    chosen: list[str] = []
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"hook names must be strings, got {type(pat).__name__}: {pat!r}")
        if any(ch in pat for ch in "*?["):
            hits = [n for n in available if fnmatch.fnmatchcase(n, pat)]
        else:
            hits = [pat] if pat in available else []
        if not hits:
            raise UnknownHookError(_unknown_message(pat, available))
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _unknown_message(name: str, available: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    if not close:  # compare against templates too, e.g. a layer index out of range
        templ = difflib.get_close_matches(name, list(HOOKS), n=3, cutoff=0.4)
        close = [t for t in templ]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    layers = sorted({int(n.split('.')[1]) for n in available if n.startswith("blocks.")})
    span = f" Layers are 0..{layers[-1]}." if layers else ""
    return (f"unknown hook name {name!r}.{hint}{span} "
            f"See model.hook_names for the full list (globs like 'blocks.*.hook_resid_post' work).")
