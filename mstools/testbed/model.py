"""The testbed MusicGen: audiocraft's own ``LMModel`` and ``MusicGen`` at a tiny size.

``build_testbed_musicgen`` gives random weights (the untrained baseline, same shapes as the trained
model); ``load_testbed_musicgen`` loads the trained weights shipped in ``weights/`` after checking
their sha256 against ``weights/manifest.json``.

Architecture (see :data:`TESTBED_CONFIG`): delay pattern over 4 codebooks, 8 pre-norm transformer
layers (dim 128, 4 heads) with cross-attention to the text condition named ``description``, made by a
tiny transformers ``T5EncoderModel`` with a word-level tokenizer (:mod:`.text`); self-attention on
the custom path (``self_attn.out_proj`` is a real module) and ``layer_scale=None``
(``layer_scale_1``, ``layer_scale_cross``, ``layer_scale_2`` are ``nn.Identity``), so hooks can
attach there.

Files in ``weights/``: ``testbed.safetensors`` (the whole ``LMModel`` state dict, the T5 encoder
and ``output_proj`` included), ``text_encoder/`` (the same T5 encoder and its tokenizer as a
``save_pretrained`` folder, for transformers) and ``manifest.json`` (config, training record,
sha256 of every file). Loading checks every checksum.

Example:

>>> model = build_testbed_musicgen(seed=0)                       # random weights, no files read
>>> model.set_generation_params(duration=1.0)
>>> wav, codes = model.generate(["fast rock with brass"], return_tokens=True)
>>> codes.shape, wav.shape
(torch.Size([1, 4, 10]), torch.Size([1, 1, 16000]))
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
import typing as tp
import warnings

import torch
from audiocraft.models.lm import LMModel
from audiocraft.models.musicgen import MusicGen
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
from audiocraft.modules.conditioners import ConditionFuser, ConditioningProvider
from safetensors.torch import load_file

from mstools.core.fileio import atomic_write_bytes, save_safetensors, sha256_file

from mstools.testbed.codec import SynthCodec
from mstools.testbed.music import CARD, DATA_VERSION, NUM_CODEBOOKS
from mstools.testbed.text import (TEXT_CONFIG, TEXT_ENCODER_FILES, T5TextConditioner, build_text_encoder, build_tokenizer,
                   save_text_encoder)

__all__ = [
    "TESTBED_CONFIG", "WEIGHTS_DIR", "TestbedMusicGen", "build_testbed_musicgen", "load_testbed_musicgen",
    "save_testbed_weights", "read_manifest", "file_sha256", "atomic_write_bytes", "TEXT_ENCODER_DIR",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "testbed.safetensors"
MANIFEST_FILE = "manifest.json"
TEXT_ENCODER_DIR = "text_encoder"

TESTBED_CONFIG: dict[str, tp.Any] = {
    "n_q": NUM_CODEBOOKS,
    "card": CARD,
    "dim": 128,
    "num_heads": 4,
    "num_layers": 8,
    "hidden_scale": 4,
    "text": dict(TEXT_CONFIG),
    "max_duration": 30.0,   # MusicGen's API limit; the model is trained on `train_seconds` clips
    "train_seconds": 6.4,
    "generation": {"duration": 6.0, "cfg_coef": 3.0, "top_k": 16, "temperature": 1.0},
}


def _merged_config(config: dict | None) -> dict:
    merged = copy.deepcopy(TESTBED_CONFIG)
    for key, value in (config or {}).items():
        if key not in merged:
            raise ValueError(f"unknown testbed config key {key!r}; known keys: {sorted(merged)}")
        if isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


class TestbedMusicGen(MusicGen):
    """``MusicGen`` whose generation defaults come from the testbed config.

    Only ``set_generation_params`` differs: arguments left out keep the testbed defaults
    (``config["generation"]``) instead of audiocraft's (``top_k=250`` would exceed the testbed's
    32-token vocabulary), and ``top_k`` is capped at the vocabulary size.
    """

    def set_generation_params(self, use_sampling: bool = True, top_k: int | None = None,  # type: ignore[override]
                              top_p: float = 0.0, temperature: float | None = None,
                              duration: float | None = None, cfg_coef: float | None = None,
                              two_step_cfg: bool = False, extend_stride: float = 18) -> None:
        gen = self.lm.testbed_config["generation"]
        super().set_generation_params(
            use_sampling=use_sampling,
            top_k=min(gen["top_k"] if top_k is None else top_k, self.lm.card),
            top_p=top_p,
            temperature=gen["temperature"] if temperature is None else temperature,
            duration=gen["duration"] if duration is None else duration,
            cfg_coef=gen["cfg_coef"] if cfg_coef is None else cfg_coef,
            two_step_cfg=two_step_cfg, extend_stride=extend_stride)


def build_testbed_musicgen(config: dict | None = None, seed: int = 0, tokenizer: tp.Any = None) -> MusicGen:
    """A testbed MusicGen with random weights (seeded; the global RNG is left untouched).

    Args:
        config: overrides of :data:`TESTBED_CONFIG` keys (e.g. ``{"num_layers": 2}``).
        seed: weight-initialisation seed.
        tokenizer: the text tokenizer (default: :func:`mstools.testbed.text.build_tokenizer`, the
            one the shipped weights were trained with).

    Returns:
        :class:`TestbedMusicGen` (an ``audiocraft.models.musicgen.MusicGen``) with a
        :class:`SynthCodec` and an ``LMModel`` in eval mode; generation defaults from
        ``config["generation"]``. ``model.lm.testbed_config`` holds
        the full config.
    """
    cfg = _merged_config(config)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(max_length=cfg["text"]["slots"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conditioner = T5TextConditioner(build_text_encoder(tokenizer, cfg["text"]), tokenizer,
                                        output_dim=cfg["dim"], slots=cfg["text"]["slots"])
        lm = LMModel(
            pattern_provider=DelayedPatternProvider(n_q=cfg["n_q"]),
            condition_provider=ConditioningProvider({"description": conditioner}),
            fuser=ConditionFuser({"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []}),
            n_q=cfg["n_q"], card=cfg["card"], dim=cfg["dim"], num_heads=cfg["num_heads"],
            num_layers=cfg["num_layers"], hidden_scale=cfg["hidden_scale"],
            norm="layer_norm", norm_first=True, bias_proj=False, bias_ff=False, bias_attn=False,
            weight_init="gaussian", depthwise_init="current", zero_bias_init=True,
            cfg_dropout=0.0, cfg_coef=cfg["generation"]["cfg_coef"],
            causal=True, cross_attention=True, custom=True, memory_efficient=False,
            layer_scale=None, dropout=0.0, positional_embedding="sin",
        )
    lm.testbed_config = cfg  # type: ignore[attr-defined]
    codec = SynthCodec(card=cfg["card"])
    model = TestbedMusicGen("testbed", codec, lm, max_duration=cfg["max_duration"])
    model.set_generation_params()
    return model


file_sha256 = sha256_file  # the weights' checksum, as written in the manifest


def save_testbed_weights(model: MusicGen | LMModel, out_dir: str | os.PathLike, *, seed: int,
                         extra: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``testbed.safetensors``, ``text_encoder/`` and ``manifest.json`` into ``out_dir``.

    ``testbed.safetensors`` holds the whole ``LMModel`` state dict (T5 encoder and ``output_proj``
    included); ``text_encoder/`` the same T5 encoder and the tokenizer as a ``save_pretrained``
    folder; the manifest the config, seed, data version, parameter count and the sha256 of every
    file. Each file is written atomically and the manifest last, so a manifest always describes
    complete files. Returns the manifest path.
    """
    lm = model.lm if isinstance(model, MusicGen) else model
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    # clone: T5's input embedding is shared with ``shared``; safetensors stores each tensor once
    state = {k: v.detach().to(dtype).clone() for k, v in lm.state_dict().items()}
    save_safetensors(state, weights)
    conditioner = lm.condition_provider.conditioners["description"]
    text_dir = save_text_encoder(conditioner.t5, conditioner.tokenizer, out_dir / TEXT_ENCODER_DIR)
    manifest = {
        "format": "mstools-testbed-2",
        "weights": WEIGHTS_FILE,
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "dtype": str(dtype).replace("torch.", ""),
        "text_encoder": {"folder": TEXT_ENCODER_DIR,
                         "sha256": {name: file_sha256(text_dir / name) for name in TEXT_ENCODER_FILES}},
        "config": lm.testbed_config,
        "parameters": sum(p.numel() for p in lm.parameters()),
        "seed": seed,
        "data_version": DATA_VERSION,
        **(extra or {}),
    }
    manifest_path = out_dir / MANIFEST_FILE
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest_path


def read_manifest(path: str | os.PathLike | None = None) -> tuple[dict, Path]:
    """``(manifest, weights_path)`` for a weights directory or ``.safetensors`` file (default: shipped)."""
    path = Path(path) if path is not None else WEIGHTS_DIR
    weights = path if path.suffix == ".safetensors" else path / WEIGHTS_FILE
    manifest_path = weights.parent / MANIFEST_FILE
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no {MANIFEST_FILE} beside {weights}; train the testbed first: "
            "python -m mstools.testbed.train")
    if not weights.exists():
        raise FileNotFoundError(f"weights file {weights} is missing; run python -m mstools.testbed.train")
    return json.loads(manifest_path.read_text()), weights


def _corrupt(path: Path, actual: str, expected: tp.Any) -> ValueError:
    return ValueError(
        f"{path} is corrupt or half-written: sha256 {actual[:12]}... does not match the "
        f"manifest's {str(expected)[:12]}...; restore it (git checkout) or retrain")


def load_testbed_musicgen(path: str | os.PathLike | None = None) -> MusicGen:
    """Load the trained testbed MusicGen (default: ``mstools/testbed/weights``).

    Args:
        path: a weights directory holding ``testbed.safetensors``, ``text_encoder/`` and
            ``manifest.json``, or the ``.safetensors`` file itself (the rest must be beside it).

    Raises:
        FileNotFoundError: no weights, text encoder folder or manifest (train with
            ``python -m mstools.testbed.train``).
        ValueError: a file's sha256 differs from the manifest (corrupt or half-written file).
    """
    # lazy: transformers/tokenizers load only when the T5 text encoder is built
    from transformers import AutoTokenizer

    manifest, weights = read_manifest(path)
    actual = file_sha256(weights)
    if actual != manifest.get("sha256"):
        raise _corrupt(weights, actual, manifest.get("sha256"))
    text = manifest.get("text_encoder")
    if not text:
        raise ValueError(f"{weights.parent / MANIFEST_FILE} has no text_encoder entry: weights of an older "
                         "testbed format; retrain with python -m mstools.testbed.train")
    text_dir = weights.parent / text["folder"]
    for name, expected in text["sha256"].items():
        if not (text_dir / name).exists():
            raise FileNotFoundError(f"{text_dir / name} is missing; run python -m mstools.testbed.train")
        actual = file_sha256(text_dir / name)
        if actual != expected:
            raise _corrupt(text_dir / name, actual, expected)
    if manifest.get("data_version") != DATA_VERSION:
        warnings.warn(f"weights were trained on grammar version {manifest.get('data_version')}, "
                      f"the code is at version {DATA_VERSION}: scores may not match the model")
    tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    model = build_testbed_musicgen(manifest["config"], seed=manifest.get("seed", 0), tokenizer=tokenizer)
    state = load_file(str(weights))
    reference = model.lm.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    model.lm.load_state_dict(state, strict=True)
    model.lm.eval()
    return model
