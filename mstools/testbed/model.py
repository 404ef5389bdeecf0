"""The testbed MusicGen: audiocraft's own ``LMModel`` and ``MusicGen`` at a tiny size.

``build_testbed_musicgen`` gives random weights (the untrained baseline, same shapes as the trained
model); ``load_testbed_musicgen`` loads the trained weights shipped in ``weights/`` after checking
their sha256 against ``weights/manifest.json``.

Architecture (see :data:`TESTBED_CONFIG`): delay pattern over 4 codebooks, pre-norm transformer with
cross-attention to a word-level text condition named ``description``; self-attention on the custom
path (``self_attn.out_proj`` is a real module) and ``layer_scale=None`` (``layer_scale_1``,
``layer_scale_cross``, ``layer_scale_2`` are ``nn.Identity``), so hooks can attach there.

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
from mstools.testbed.conditioner import WordConditioner
from mstools.testbed.music import CARD, DATA_VERSION, NUM_CODEBOOKS

__all__ = [
    "TESTBED_CONFIG", "WEIGHTS_DIR", "TestbedMusicGen", "build_testbed_musicgen", "load_testbed_musicgen",
    "save_testbed_weights", "file_sha256", "atomic_write_bytes",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "testbed.safetensors"
MANIFEST_FILE = "manifest.json"

TESTBED_CONFIG: dict[str, tp.Any] = {
    "n_q": NUM_CODEBOOKS,
    "card": CARD,
    "dim": 96,
    "num_heads": 4,
    "num_layers": 4,
    "hidden_scale": 4,
    "text_dim": 32,
    "text_slots": 8,
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


def build_testbed_musicgen(config: dict | None = None, seed: int = 0) -> MusicGen:
    """A testbed MusicGen with random weights (seeded; the global RNG is left untouched).

    Args:
        config: overrides of :data:`TESTBED_CONFIG` keys (e.g. ``{"num_layers": 2}``).
        seed: weight-initialisation seed.

    Returns:
        :class:`TestbedMusicGen` (an ``audiocraft.models.musicgen.MusicGen``) with a
        :class:`SynthCodec` and an ``LMModel`` in eval mode; generation defaults from
        ``config["generation"]``. ``model.lm.testbed_config`` holds
        the full config.
    """
    cfg = _merged_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conditioner = WordConditioner(output_dim=cfg["dim"], dim=cfg["text_dim"], slots=cfg["text_slots"])
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
    """Write ``testbed.safetensors`` and ``manifest.json`` (config, seed, data version, sha256).

    Both files are written atomically; the manifest is written last, so a manifest always describes
    a complete weights file. Returns the manifest path.
    """
    lm = model.lm if isinstance(model, MusicGen) else model
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    state = {k: v.to(dtype) for k, v in lm.state_dict().items()}
    save_safetensors(state, weights)
    manifest = {
        "format": "mstools-testbed-1",
        "weights": WEIGHTS_FILE,
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "dtype": str(dtype).replace("torch.", ""),
        "config": lm.testbed_config,
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


def load_testbed_musicgen(path: str | os.PathLike | None = None) -> MusicGen:
    """Load the trained testbed MusicGen (default: ``mstools/testbed/weights``).

    Args:
        path: a weights directory holding ``testbed.safetensors`` and ``manifest.json``, or the
            ``.safetensors`` file itself (its manifest must be beside it).

    Raises:
        FileNotFoundError: no weights or manifest (train with ``python -m mstools.testbed.train``).
        ValueError: the file's sha256 differs from the manifest (corrupt or half-written file).
    """
    manifest, weights = read_manifest(path)
    actual = file_sha256(weights)
    if actual != manifest.get("sha256"):
        raise ValueError(
            f"{weights} is corrupt or half-written: sha256 {actual[:12]}... does not match the "
            f"manifest's {str(manifest.get('sha256'))[:12]}...; restore it (git checkout) or retrain")
    if manifest.get("data_version") != DATA_VERSION:
        warnings.warn(f"weights were trained on grammar version {manifest.get('data_version')}, "
                      f"the code is at version {DATA_VERSION}: scores may not match the model")
    model = build_testbed_musicgen(manifest["config"], seed=manifest.get("seed", 0))
    state = load_file(str(weights))
    reference = model.lm.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    model.lm.load_state_dict(state, strict=True)
    model.lm.eval()
    return model
