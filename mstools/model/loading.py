"""Getting a MusicGen by name: the embedded testbed, random weights at true size, or a checkpoint.

One parser of model names (:func:`parse_model_name`) serves the API, the notebooks and the command
line:

- ``"testbed"`` — embedded, offline, trained here on procedural music (:mod:`mstools.testbed`);
  it comes with its reference clips and its grammar as scorer.
- ``"testbed-untrained"`` — the testbed's architecture with random weights (the untrained baseline).
- ``"random-<scale>"`` — MusicGen's real architectures with random weights (``tiny``, ``small``,
  ``medium``, ``large``), built through audiocraft's own builders or transformers' configs.
- ``"facebook/musicgen-small"`` etc. or a local folder — a real checkpoint; read with
  ``torch.load(weights_only=True)`` or safetensors only.

Both :func:`load_musicgen` and :func:`build_musicgen` take ``backend="audiocraft"`` (default) or
``"transformers"`` and return a :class:`~mstools.model.hooked.HookedMusicGen` with the same hook
names either way.

>>> build_musicgen("tiny", seed=0).num_layers
2
>>> parse_model_name("random-small"), parse_model_name("testbed")
(('random', 'small'), ('testbed', 'trained'))
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from mstools.core.errors import BadInputError, MissingWeightsError
from mstools.core.names import BACKENDS
from mstools.model.checkpoints import (ARCHITECTURES, MELODY_NOTE, REAL_CHECKPOINTS, checkpoint_files,
                                       export_checkpoint, lm_config, load_checkpoint, random_encodec)
from mstools.model import hub
from mstools.model.hooked import HookedMusicGen

__all__ = ["load_musicgen", "build_musicgen", "parse_model_name", "MissingWeightsError",
           "ARCHITECTURES", "REAL_CHECKPOINTS", "export_checkpoint", "MODEL_HELP"]

MODEL_HELP = ("testbed (embedded, offline), testbed-untrained (same shape, random weights), "
              "random-tiny | random-small | random-medium | random-large (random weights, real "
              "architecture), a released checkpoint (facebook/musicgen-small ...) or a local "
              "checkpoint folder")


def parse_model_name(name: str) -> tuple[str, str]:
    """``(kind, argument)`` of a model name: ``("testbed", "trained" | "untrained")``,
    ``("random", scale)``, ``("checkpoint", hub id)`` or ``("folder", path)``.

    Raises:
        BadInputError: a name that is none of these (the message lists what works).
    """
    if not isinstance(name, str) or not name:
        raise BadInputError(f"a model name must be a non-empty string, got {name!r}; use {MODEL_HELP}")
    if name == "testbed":
        return "testbed", "trained"
    if name == "testbed-untrained":
        return "testbed", "untrained"
    if name.startswith("random-"):
        scale = name.removeprefix("random-")
        if scale not in ARCHITECTURES:
            raise BadInputError(f"unknown model {name!r}; random models are "
                                f"{', '.join('random-' + s for s in ARCHITECTURES)}")
        return "random", scale
    if name in ARCHITECTURES:
        raise BadInputError(f"{name!r} is an architecture, not a checkpoint: use "
                            f"'random-{name}' (build_musicgen({name!r})) for random weights or "
                            f"'facebook/musicgen-{name}'")
    if Path(os.path.expanduser(name)).is_dir():
        return "folder", name
    if name in REAL_CHECKPOINTS:
        return "checkpoint", name
    raise BadInputError(f"unknown model {name!r}; use {MODEL_HELP}")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise BadInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BadInputError(f"unknown device {device!r} ({err}); use 'cpu', 'cuda' or "
                            f"'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {device!r} asked for, but this machine has no usable CUDA GPU; "
                            f"use the CPU ('cpu')")
    return dev


def _testbed(trained: bool, seed: int, device: torch.device, backend: str) -> HookedMusicGen:
    # lazy: the testbed pulls in audiocraft's LM classes, which only this path needs
    from mstools import testbed
    mg = testbed.load_testbed_musicgen() if trained else testbed.build_testbed_musicgen(seed=seed)
    mg.lm.to(device)
    mg.compression_model.to(device)
    mg.device = device
    source: Any = mg
    if backend == "transformers":
        # lazy: transformers is only needed on this backend
        source = testbed_on_transformers(mg)
    return HookedMusicGen(source, name="testbed" if trained else "testbed-untrained",
                          reference_clips=testbed.reference_clips, scorer=testbed.score)


def testbed_on_transformers(musicgen: Any) -> Any:
    """The testbed as a standard ``MusicgenForConditionalGeneration`` (T5 text encoder +
    ``enc_to_dec_proj`` + decoder + EnCodec, :func:`mstools.model.composite.testbed_composite`):
    what ``python -m mstools export`` writes, used as any transformers MusicGen.

    Prompts reach the decoder as audiocraft's conditioner gives them (fixed slots, no mask), so
    both backends are one model. For the word testbed the exported tokenizer already fills the
    slots, and transformers' own ``processor -> generate`` reads prompts the same way. A T5
    conditioner padded to fixed slots whose tokenizer does not fill them is read with ``text_slots``
    here, while transformers' own path masks the padding (the two agree only as far as the model
    was trained to read both alike, e.g. with random padding).
    """
    # lazy: transformers and the testbed's composite build load only on this path
    from mstools.model.backends.audiocraft_backend import AudiocraftBackend
    from mstools.model.backends.transformers_backend import backend_from_composite
    from mstools.model.composite import testbed_composite
    from mstools.testbed.hf_text import fills_slots
    reference = AudiocraftBackend(musicgen)
    model, processor = testbed_composite(musicgen)
    device = reference.lm.emb[0].weight.device
    text = {f"condition_provider.{k}": v
            for k, v in musicgen.lm.condition_provider.state_dict().items()}
    # a tokenizer that fills the conditioner's slots itself (the word testbed) makes transformers'
    # masking read prompts as audiocraft does; otherwise mstools pads to the slots and does not mask
    conditioner = musicgen.lm.condition_provider.conditioners["description"]
    slots = int(getattr(conditioner, "slots", 0) or 0)
    text_slots = None if not slots or fills_slots(processor.tokenizer, slots) else slots

    def check_prompt(text: str) -> None:
        # the same errors as on audiocraft (the word conditioner refuses unknown words and
        # prompts longer than its slots; the exported tokenizer maps them to <unk> / more tokens)
        conditioner.tokenize([text])

    return backend_from_composite(model.to(device), processor.tokenizer,
                                  max_duration=reference.max_duration,
                                  defaults=dict(reference.defaults), text_reference=text,
                                  text_slots=text_slots, check_prompt=check_prompt)



def build_musicgen(scale: str = "tiny", seed: int = 0, *, max_duration: float = 30.0,
                   device: str | torch.device = "cpu", backend: str = "audiocraft") -> HookedMusicGen:
    """MusicGen's real architecture (or the testbed's) with random weights.

    Args:
        scale: ``"tiny"`` (2 layers x 32 dims, for tests), ``"small"`` (24 x 1024, 420 M LM
            parameters), ``"medium"`` (48 x 1536), ``"large"`` (48 x 2048), or ``"testbed"`` (the
            testbed's shape: the untrained baseline, with the testbed's reference clips and scorer).
        seed: weight initialisation seed (the global RNG is left as it was).
        max_duration: longest generation in seconds.
        backend: ``"audiocraft"`` (audiocraft's builders, an offline LUT text conditioner) or
            ``"transformers"`` (``MusicgenForConditionalGeneration`` from configs: T5 text encoder
            with an offline word tokenizer, EnCodec with random codebooks).

    Returns:
        HookedMusicGen named ``"random-{scale}"`` (``"testbed-untrained"`` for the testbed).

    >>> len(build_musicgen("tiny").hook_names)
    15
    """
    _check_backend(backend)
    device = _device(device)
    if scale == "testbed":
        return _testbed(False, seed, device, backend)
    if scale not in ARCHITECTURES:
        raise BadInputError(f"unknown scale {scale!r}; choose one of {sorted(ARCHITECTURES)} or "
                            f"'testbed'")
    if backend == "transformers":
        # lazy: transformers is only needed on this backend
        from mstools.model.backends.hf_models import build_hf_musicgen
        from mstools.model.backends.transformers_backend import backend_from_composite
        hf, tokenizer = build_hf_musicgen(scale, seed, device=device)
        return HookedMusicGen(backend_from_composite(hf, tokenizer, max_duration=max_duration),
                              name=f"random-{scale}")
    # lazy: audiocraft's builders are heavy and only this path needs them
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(lm_config(scale, max_duration))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lm = builders.get_lm_model(cfg)
    lm.cfg = cfg
    lm = lm.to(device).eval()
    compression = random_encodec(scale, seed).to(device)
    mg = MusicGen(f"random-{scale}", compression, lm, max_duration=max_duration)
    mg.set_generation_params(top_k=min(250, ARCHITECTURES[scale]["card"]),
                             duration=min(10.0, max_duration))
    return HookedMusicGen(mg, name=f"random-{scale}")


def load_musicgen(name: str = "testbed", *, device: str | torch.device | None = None,
                  backend: str = "audiocraft", seed: int = 0) -> HookedMusicGen:
    """Load a MusicGen by name (see :func:`parse_model_name`) and wrap it with hook points.

    Args:
        name: ``"testbed"`` (embedded, offline), ``"testbed-untrained"``, ``"random-<scale>"``, a
            released checkpoint id (``"facebook/musicgen-small"``, ``-medium``, ``-large``,
            ``-melody``; always name one: audiocraft's own default is the melody model), or a local
            checkpoint folder.
        device: ``"cpu"``, ``"cuda"``; default: cuda when available.
        backend: ``"audiocraft"`` (audiocraft checkpoints: ``state_dict.bin`` +
            ``compression_state_dict.bin``) or ``"transformers"`` (transformers checkpoints:
            ``config.json`` + ``model.safetensors`` + tokenizer, e.g. the hub's
            ``facebook/musicgen-small``). The testbed runs on both.
        seed: weight seed for random models (``testbed-untrained``, ``random-<scale>``).

    A released checkpoint is read from the local Hugging Face cache, or fetched when the hub answers;
    when it does not, the hub clients are switched to offline mode first
    (:func:`mstools.model.hub.prepare_offline`), so a missing file fails at once, without retries.

    Raises:
        MissingWeightsError: the weights cannot be found or fetched (the message says how to provide
            them, and points to the testbed).
        BadInputError: an unknown name, backend or device.

    >>> load_musicgen("testbed").model_name
    'testbed'
    """
    kind, arg = parse_model_name(name)
    _check_backend(backend)
    if kind == "random":
        return build_musicgen(arg, seed=seed, device=_device(device or "cpu"), backend=backend)
    dev = _device(device)
    if kind == "testbed":
        return _testbed(arg == "trained", seed, dev, backend)
    if kind == "checkpoint":  # no network: read the local cache at once instead of retrying
        hub.prepare_offline()
    with hub.quiet():
        if backend == "transformers":
            # lazy: transformers is only needed on this backend
            from mstools.model.backends.hf_models import load_hf_musicgen
            from mstools.model.backends.transformers_backend import backend_from_composite
            hf, tokenizer = load_hf_musicgen(name, device=dev)
            return HookedMusicGen(backend_from_composite(hf, tokenizer), name=name)
        if "melody" in name:
            warnings.warn(MELODY_NOTE, stacklevel=2)
        lm_f, comp_f = checkpoint_files(name)
        return load_checkpoint(name, lm_f, comp_f, dev)
