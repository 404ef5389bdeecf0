"""Getting a MusicGen: real checkpoints, random weights at true size, or the embedded testbed.

- :func:`load_musicgen` — ``"testbed"`` (embedded, offline) or a real checkpoint
  (``facebook/musicgen-small|medium|large|melody`` or a local folder holding audiocraft's
  ``state_dict.bin`` and ``compression_state_dict.bin``). Checkpoints are read with
  ``torch.load(weights_only=True)``: no pickled code is ever executed.
- :func:`build_musicgen` — MusicGen's real architectures (``"small"``, ``"medium"``, ``"large"``)
  and a ``"tiny"`` one for tests, with random weights and an offline text conditioner (audiocraft's
  ``LUTConditioner`` with the ``noop`` tokenizer: each prompt hashes to one token), for tests and
  benchmarks. Built through audiocraft's own ``builders.get_lm_model``.

Both take ``backend="audiocraft"`` (default: Meta's reference implementation) or
``backend="transformers"`` (Hugging Face's ``MusicgenForConditionalGeneration``; the testbed becomes
one: T5 text encoder, ``enc_to_dec_proj``, its LM's weights in the decoder through
:mod:`mstools.backends.convert`, an EnCodec that decodes as its synth, see
:mod:`mstools.testbed.hf_model`). All return a
:class:`mstools.hooked.HookedMusicGen` with the same hook names either way.

>>> model = build_musicgen("tiny", seed=0)
>>> model.num_layers, model.d_model
(2, 32)
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from .hooked import HookedMusicGen

__all__ = ["load_musicgen", "build_musicgen", "MissingWeightsError", "ARCHITECTURES",
           "REAL_CHECKPOINTS"]

#: MusicGen LM architectures (audiocraft configs of the released checkpoints).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=32, num_heads=4, num_layers=2, card=64, t5="-", frame_rate=25, sample_rate=16000),
    "small": dict(dim=1024, num_heads=16, num_layers=24, card=2048, t5="t5-base", frame_rate=50,
                  sample_rate=32000),
    "medium": dict(dim=1536, num_heads=24, num_layers=48, card=2048, t5="t5-large", frame_rate=50,
                   sample_rate=32000),
    "large": dict(dim=2048, num_heads=32, num_layers=48, card=2048, t5="t5-large", frame_rate=50,
                  sample_rate=32000),
}

REAL_CHECKPOINTS = {
    "facebook/musicgen-small": "small",
    "facebook/musicgen-medium": "medium",
    "facebook/musicgen-large": "large",
    "facebook/musicgen-melody": "medium",
    "facebook/musicgen-melody-large": "large",
    "facebook/musicgen-stereo-small": "small",
    "facebook/musicgen-stereo-medium": "medium",
    "facebook/musicgen-stereo-large": "large",
}

MELODY_NOTE = ("Note: melody checkpoints prepend their chroma condition to the sequence instead of "
               "cross-attending to it; text still enters by cross-attention. Their LM steps are "
               "offset by the prepended length inside the forward pass; mstools' step clock counts "
               "codes only.")


class MissingWeightsError(RuntimeError):
    """A real checkpoint's weights could not be found or fetched."""


def _lm_config(scale: str, max_duration: float) -> dict[str, Any]:
    a = ARCHITECTURES[scale]
    dim = a["dim"]
    return {
        "device": "cpu", "dtype": "float32", "lm_model": "transformer_lm",
        "dataset": {"segment_duration": max_duration},
        "transformer_lm": dict(
            n_q=4, card=a["card"], dim=dim, num_heads=a["num_heads"], num_layers=a["num_layers"],
            hidden_scale=4, norm="layer_norm", norm_first=True, bias_ff=False, bias_attn=False,
            bias_proj=False, past_context=None, causal=True, custom=False, memory_efficient=True,
            attention_as_float32=False, layer_scale=None, positional_embedding="sin",
            xpos=False, checkpointing="none", weight_init="gaussian", depthwise_init="current",
            zero_bias_init=True, activation="gelu", dropout=0.0, emb_lr=None),
        "codebooks_pattern": {"modeling": "delay",
                              "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0,
                                        "empty_initial": 0}},
        "attribute_dropout": {},
        "classifier_free_guidance": {"training_dropout": 0.1, "inference_coef": 3.0},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "lut",
                                          "lut": {"n_bins": 1024, "dim": dim, "tokenizer": "noop"}}},
    }


def _random_encodec(scale: str, seed: int) -> torch.nn.Module:
    """An EnCodec of the real shape (32 kHz, 50 Hz, 4 x 2048) or a tiny one, random weights.

    Codebooks are randomly initialised (not k-means-pending zeros), so audio depends on the codes.
    """
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.modules.seanet import SEANetDecoder, SEANetEncoder
    from audiocraft.quantization.vq import ResidualVectorQuantizer
    a = ARCHITECTURES[scale]
    if scale == "tiny":
        kw = dict(n_filters=4, n_residual_layers=1, dimension=32, ratios=[10, 8, 8])
    else:
        kw = dict(n_filters=64, n_residual_layers=1, dimension=128, ratios=[8, 5, 4, 4], lstm=2)
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed + 1)
        enc, dec = SEANetEncoder(**kw), SEANetDecoder(**kw)
        q = ResidualVectorQuantizer(dimension=kw["dimension"], n_q=4, bins=a["card"],
                                    kmeans_init=False)
    return EncodecModel(enc, dec, q, frame_rate=a["frame_rate"], sample_rate=a["sample_rate"],
                        channels=1).eval()


def build_musicgen(scale: str = "tiny", seed: int = 0, *, max_duration: float = 30.0,
                   device: str | torch.device = "cpu", backend: str = "audiocraft") -> HookedMusicGen:
    """MusicGen's real architecture with random weights and an offline text conditioner.

    Args:
        scale: ``"tiny"`` (2 layers x 32 dims, for tests), ``"small"`` (24 x 1024, 420 M LM
            parameters), ``"medium"`` (48 x 1536) or ``"large"`` (48 x 2048).
        seed: weight initialisation seed (the global RNG is left as it was).
        max_duration: longest generation in seconds.
        backend: ``"audiocraft"`` (audiocraft's builders, LUT text conditioner) or
            ``"transformers"`` (``MusicgenForConditionalGeneration`` from configs: T5 text encoder
            with an offline word tokenizer, EnCodec with random codebooks).

    Returns:
        HookedMusicGen named ``"random-{scale}"``.

    >>> model = build_musicgen("tiny")
    >>> len(model.hook_names)
    15
    """
    if scale not in ARCHITECTURES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(ARCHITECTURES)}")
    if _check_backend(backend) == "transformers":
        from .backends.hf_models import build_hf_musicgen
        from .backends.transformers_backend import backend_from_composite
        hf, tokenizer = build_hf_musicgen(scale, seed, device=device)
        return HookedMusicGen(backend_from_composite(hf, tokenizer, max_duration=max_duration),
                              name=f"random-{scale}")
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(_lm_config(scale, max_duration))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lm = builders.get_lm_model(cfg)
    lm.cfg = cfg
    lm = lm.to(device).eval()
    compression = _random_encodec(scale, seed).to(device)
    mg = MusicGen(f"random-{scale}", compression, lm, max_duration=max_duration)
    mg.set_generation_params(top_k=min(250, ARCHITECTURES[scale]["card"]),
                             duration=min(10.0, max_duration))
    return HookedMusicGen(mg, name=f"random-{scale}")


def _testbed_reference(n: int = 32, seconds: float = 6.0) -> tuple[torch.Tensor, list[str]]:
    """Procedural clips with their prompts: the testbed's reference for activation norms."""
    from .testbed import make_dataset
    from .testbed.music import FRAME_RATE
    clips = make_dataset(n, frames=int(seconds * FRAME_RATE), seed=12345)
    return torch.stack([c.codes for c in clips]), [c.prompt for c in clips]


def _checkpoint_files(name: str) -> tuple[Path, Path]:
    """Local paths of ``state_dict.bin`` and ``compression_state_dict.bin`` for a checkpoint."""
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        lm_f, comp_f = p / "state_dict.bin", p / "compression_state_dict.bin"
        missing = [f.name for f in (lm_f, comp_f) if not f.is_file()]
        if missing:
            raise MissingWeightsError(f"{p} lacks {', '.join(missing)}; a MusicGen checkpoint folder "
                                      "holds audiocraft's state_dict.bin and compression_state_dict.bin")
        return lm_f, comp_f
    try:
        from huggingface_hub import hf_hub_download
        cache_dir = os.environ.get("AUDIOCRAFT_CACHE_DIR")
        lm_f = hf_hub_download(repo_id=name, filename="state_dict.bin", cache_dir=cache_dir)
        comp_f = hf_hub_download(repo_id=name, filename="compression_state_dict.bin",
                                 cache_dir=cache_dir)
    except Exception as e:  # offline, no network, gated, unknown repo ...
        raise MissingWeightsError(_missing_message(name, e)) from e
    return Path(lm_f), Path(comp_f)


def _missing_message(name: str, err: BaseException | None = None) -> str:
    why = f" ({type(err).__name__}: {str(err).splitlines()[0][:200]})" if err else ""
    return (
        f"could not fetch the weights of {name!r}{why}.\n"
        "To use a real checkpoint, either:\n"
        f"  - run once where the Hugging Face Hub is reachable so it is cached (huggingface-cli "
        f"download {name}), then set HF_HUB_OFFLINE=1; or\n"
        "  - download state_dict.bin and compression_state_dict.bin (plus the T5 text encoder "
        "and EnCodec the checkpoint names) and call load_musicgen('/path/to/folder').\n"
        "Without weights, use the embedded testbed: load_musicgen('testbed'), or a random model of "
        "the real size: build_musicgen('small').")


def _safe_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MissingWeightsError(
            f"{path} could not be read safely with torch.load(weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}. The file may be corrupt or "
            "half-downloaded (delete it and fetch it again), or it stores Python objects mstools "
            "refuses to unpickle.") from e


def _check_backend(backend: str) -> str:
    from .hook_registry import BACKENDS
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


def load_musicgen(name: str = "testbed", *, device: str | torch.device | None = None,
                  backend: str = "audiocraft") -> HookedMusicGen:
    """Load a MusicGen and wrap it with hook points.

    Args:
        name: ``"testbed"`` (embedded, offline), a released checkpoint id
            (``"facebook/musicgen-small"``, ``-medium``, ``-large``, ``-melody``; always name one:
            audiocraft's own default is the melody model), or a local checkpoint folder.
        device: ``"cpu"``, ``"cuda"``; default: cuda when available.
        backend: ``"audiocraft"`` (audiocraft checkpoints: ``state_dict.bin`` +
            ``compression_state_dict.bin``) or ``"transformers"`` (transformers checkpoints:
            ``config.json`` + ``model.safetensors`` + tokenizer, e.g. the hub's
            ``facebook/musicgen-small``). The testbed runs on both.

    Raises:
        MissingWeightsError: the weights cannot be found or fetched (the message says how to provide
            them, and points to the testbed).

    >>> model = load_musicgen("testbed")
    """
    _check_backend(backend)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "testbed":
        from .testbed.model import load_testbed_musicgen
        mg = load_testbed_musicgen()
        mg.lm.to(device)
        mg.compression_model.to(device)
        mg.device = torch.device(device)
        source: Any = mg
        if backend == "transformers":
            from .backends.transformers_backend import backend_from_testbed
            source = backend_from_testbed(mg)
        model = HookedMusicGen(source, name="testbed")
        model.reference_codes = _testbed_reference
        return model
    if name in ARCHITECTURES:
        raise ValueError(f"{name!r} is an architecture, not a checkpoint: use build_musicgen({name!r}) "
                         f"for random weights or load_musicgen('facebook/musicgen-{name}')")
    is_dir = Path(os.path.expanduser(name)).is_dir()
    if not is_dir and name not in REAL_CHECKPOINTS:
        raise ValueError(f"unknown model {name!r}; use 'testbed', one of {sorted(REAL_CHECKPOINTS)}, "
                         "or a local checkpoint folder")
    if backend == "transformers":
        from .backends.hf_models import load_hf_musicgen
        from .backends.transformers_backend import backend_from_composite
        hf, tokenizer = load_hf_musicgen(name, device=device)
        return HookedMusicGen(backend_from_composite(hf, tokenizer), name=name)
    if "melody" in name:
        import warnings
        warnings.warn(MELODY_NOTE)
    lm_f, comp_f = _checkpoint_files(name)
    return _load_checkpoint(name, lm_f, comp_f, device)


def _load_checkpoint(name: str, lm_f: Path, comp_f: Path, device: Any) -> HookedMusicGen:
    from audiocraft.models import builders
    from audiocraft.models.encodec import CompressionModel
    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf
    pkg = _safe_load(lm_f)
    cfg = OmegaConf.create(pkg["xp.cfg"])
    cfg.device = str(device)
    cfg.dtype = "float32" if str(device) == "cpu" else "float16"
    for key in ("conditioners.self_wav.chroma_stem.cache_path", "conditioners.args.merge_text_conditions_p",
                "conditioners.args.drop_desc_p"):
        _delete(cfg, key)
    try:
        lm = builders.get_lm_model(cfg)  # builds T5: needs its weights too
    except OSError as e:
        raise MissingWeightsError(_missing_message(f"{name} (text encoder)", e)) from e
    lm.load_state_dict(pkg["best_state"])
    lm.eval()
    lm.cfg = cfg
    cpkg = _safe_load(comp_f)
    try:
        if "pretrained" in cpkg:
            comp = CompressionModel.get_pretrained(cpkg["pretrained"], device=device)
        else:
            ccfg = OmegaConf.create(cpkg["xp.cfg"])
            ccfg.device = str(device)
            comp = builders.get_compression_model(ccfg)
            comp.load_state_dict(cpkg["best_state"])
    except OSError as e:
        raise MissingWeightsError(_missing_message(f"{name} (compression model)", e)) from e
    comp.eval()
    mg = MusicGen(name, comp, lm)
    return HookedMusicGen(mg, name=name)


def _delete(cfg: Any, dotted: str) -> None:
    from omegaconf import OmegaConf
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        if p not in node:
            return
        node = node[p]
    OmegaConf.set_struct(node, False)
    if parts[-1] in node:
        del node[parts[-1]]


def export_checkpoint(model: HookedMusicGen, folder: str | Path) -> Path:
    """Write a model as an audiocraft checkpoint folder (``state_dict.bin`` +
    ``compression_state_dict.bin``, tensors and a YAML config only), readable by
    :func:`load_musicgen`. Used to test the real loading path offline.
    """
    from omegaconf import OmegaConf
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(model.lm.cfg)
    torch.save({"best_state": model.lm.state_dict(), "xp.cfg": OmegaConf.to_yaml(cfg)},
               folder / "state_dict.bin")
    comp = model.compression_model
    ccfg = _encodec_config(model)
    torch.save({"best_state": comp.state_dict(), "xp.cfg": OmegaConf.to_yaml(ccfg)},
               folder / "compression_state_dict.bin")
    return folder


def _encodec_config(model: HookedMusicGen) -> Any:
    from omegaconf import OmegaConf
    comp = model.compression_model
    enc = comp.encoder
    scale = "tiny" if enc.dimension == 32 else "small"
    kw = dict(n_filters=4, n_residual_layers=1, dimension=32, ratios=[10, 8, 8]) if scale == "tiny" \
        else dict(n_filters=64, n_residual_layers=1, dimension=128, ratios=[8, 5, 4, 4], lstm=2)
    return OmegaConf.create({
        "device": "cpu", "sample_rate": comp.sample_rate, "channels": comp.channels,
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": comp.sample_rate,
                    "channels": comp.channels, "causal": False, "renormalize": False},
        "seanet": {**kw, "channels": comp.channels, "encoder": {}, "decoder": {}},
        "rvq": {"n_q": 4, "bins": comp.cardinality, "kmeans_init": False},
    })
