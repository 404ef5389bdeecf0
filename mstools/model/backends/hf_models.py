"""Getting a Hugging Face ``transformers`` MusicGen (``MusicgenForConditionalGeneration``) and its tokenizer.

- :func:`build_hf_musicgen` — the released architectures (``"small"``, ``"medium"``, ``"large"``,
  shapes copied from the checkpoints' ``config.json``) and a ``"tiny"`` one for tests, with seeded
  random weights, built from configs only (nothing is downloaded). Text goes through
  :func:`offline_tokenizer`, a word-level tokenizer over a fixed English/music vocabulary.
- :func:`load_hf_musicgen` — a released checkpoint by hub id (from the local Hugging Face cache) or a
  local folder written by ``model.save_pretrained`` + ``tokenizer.save_pretrained``. Weights are read
  from safetensors only; a missing or corrupt file raises :class:`mstools.model.loading.MissingWeightsError`
  with what to do.
- :func:`randomize_codebooks` — fills a random EnCodec's codebooks (transformers initialises them to
  zeros, which makes the decoded audio independent of the codes).

Traps of ``transformers`` MusicGen handled here (5.23): the pad / bos / decoder-start token is the
extra embedding row ``vocab_size`` (set on the decoder config, the top config and the generation
config); ``max_new_tokens`` counts the delay steps, so ``N`` frames of 4 codebooks need ``N + 3``;
with guidance the batch is doubled inside the decoder, conditional rows first.

>>> model, tokenizer = build_hf_musicgen("tiny", seed=0)
>>> audio = model.generate(**tokenizer(["jazz"], return_tensors="pt", padding=True),
...                        max_new_tokens=10 + 3)          # 10 frames at 25 frames/s
>>> audio.shape                                          # [B, channels, samples]: 10 * 16000 / 25
torch.Size([1, 1, 6400])
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open

from mstools.core.errors import MissingWeightsError

if TYPE_CHECKING:
    from transformers import (MusicgenConfig, MusicgenForConditionalGeneration,
                              PreTrainedTokenizerBase, PreTrainedTokenizerFast)

__all__ = ["HF_ARCHITECTURES", "build_hf_musicgen", "hf_musicgen_config", "load_hf_musicgen",
           "offline_tokenizer", "randomize_codebooks"]

# Sub-model shapes of the released checkpoints (facebook/musicgen-{small,medium,large} config.json);
# keys are the transformers config field names. The text encoder is t5-base / t5-large, the audio
# encoder EnCodec 32 kHz (hop 640 samples = 50 frames/s, 4 codebooks of 2048 at 2.2 kbps).
_T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
_T5_LARGE = dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16)
_ENCODEC_32KHZ = dict(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], num_filters=64,
                      hidden_size=128, codebook_size=2048, num_lstm_layers=2, target_bandwidths=[2.2],
                      normalize=False, chunk_length_s=None, overlap=None, use_causal_conv=False,
                      use_conv_shortcut=False, audio_channels=1)


def _decoder(hidden: int, layers: int, heads: int, ffn: int, vocab: int = 2048) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                vocab_size=vocab, num_codebooks=4, max_position_embeddings=2048, audio_channels=1)


#: MusicGen architectures for the transformers backend: ``{scale: {"decoder": ..., "text_encoder": ...,
#: "audio_encoder": ...}}``, each a dict of ``MusicgenDecoderConfig`` / ``T5Config`` / ``EncodecConfig``
#: fields. ``"tiny"`` (2 x 32 decoder, 1-layer T5 of width 16, 16 kHz EnCodec at 25 frames/s with
#: 4 codebooks of 64) is for tests.
HF_ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "decoder": _decoder(32, 2, 4, 128, vocab=64),
        "text_encoder": dict(vocab_size=600, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
        # hop 10 * 8 * 8 = 640 samples at 16 kHz = 25 frames/s; 1000 * 0.6 / (25 * log2(64)) = 4 codebooks
        "audio_encoder": dict(sampling_rate=16000, upsampling_ratios=[10, 8, 8], num_filters=4,
                              hidden_size=16, codebook_size=64, num_lstm_layers=1,
                              target_bandwidths=[0.6], normalize=False, chunk_length_s=None,
                              overlap=None, use_causal_conv=False, use_conv_shortcut=False,
                              audio_channels=1),
    },
    "small": {"decoder": _decoder(1024, 24, 16, 4096), "text_encoder": _T5_BASE,
              "audio_encoder": _ENCODEC_32KHZ},
    "medium": {"decoder": _decoder(1536, 48, 24, 6144), "text_encoder": _T5_LARGE,
               "audio_encoder": _ENCODEC_32KHZ},
    "large": {"decoder": _decoder(2048, 48, 32, 8192), "text_encoder": _T5_LARGE,
              "audio_encoder": _ENCODEC_32KHZ},
}

# The offline tokenizer's vocabulary: T5's special ids first (pad 0, eos 1, unk 2), then punctuation
# and a few hundred words that music prompts use. Order is part of the format: never reorder, only
# append (ids of saved random models depend on it).
_SPECIALS = ["<pad>", "</s>", "<unk>"]
_WORDS = """
, . - ! ? ' : ; ( ) / & +
a an the and or with without in on of for to from by at into over under up down like as is are be
it its this that some very more less much lots plus but not no then while during after before
through feat style vibe vibes song songs track music musical tune piece sound sounds sounding feel
feeling one two three four five six seven eight nine ten
0 1 2 3 4 5 6 7 8 9 60 70 80 90 100 110 120 128 130 140 150 160 170 174 808 909
60s 70s 80s 90s 2000s
jazz rock pop classical blues folk country metal punk funk soul disco reggae ska hip hop rap trap
house techno trance dubstep drum bass ambient electronic edm synthwave lofi lo fi indie grunge
gospel latin salsa samba bossa nova tango flamenco afrobeat kpop jpop opera baroque romantic
orchestral cinematic soundtrack score chiptune garage grime dnb breakbeat jungle hardcore emo
shoegaze psychedelic progressive experimental minimal acoustic instrumental world celtic bluegrass
rnb r b swing bebop fusion noise industrial new wave retro vintage medieval traditional tribal
arabic indian african japanese chinese irish spanish brazilian cuban caribbean hawaiian
piano pianos guitar guitars electric drums kit percussion violin violins viola cello strings string
orchestra ensemble quartet trumpet trombone horn horns brass saxophone sax flute clarinet oboe
bassoon harp organ synth synths synthesizer pad pads lead arpeggio arpeggiated keys keyboard rhodes
marimba xylophone vibraphone glockenspiel bells chimes accordion harmonica banjo mandolin ukulele
sitar tabla koto shamisen erhu bagpipes didgeridoo cymbal cymbals snare kick hihat hi hat claps clap
tambourine bongos congas timpani choir vocals vocal voice voices singer singing humming whistle
whistling beat beats bassline riff riffs melody melodies harmony chords chord solo groove loop loops
sample samples turntable scratch
happy sad calm relaxing relaxed chill peaceful dreamy dark bright uplifting energetic epic dramatic
emotional melancholic melancholy nostalgic mysterious eerie scary tense aggressive angry powerful
gentle soft loud quiet warm cold heavy light airy lush rich smooth gritty raw clean distorted fuzzy
crisp punchy deep driving bouncy groovy funky catchy playful joyful cheerful hopeful triumphant
heroic majestic serene tranquil meditative hypnotic atmospheric ethereal spacey cosmic futuristic
mellow sweet lovely beautiful simple complex sparse dense layered live studio lively dancing dance
danceable party summer winter night morning rain ocean sunset fun intense
slow fast medium moderate upbeat steady tempo bpm rhythm rhythmic syncopated staccato legato
sustained reverb echo delay high low pitch pitched major minor key harmonic dissonant tonal modal
pentatonic chromatic time signature waltz march ballad anthem lullaby hymn jingle intro outro verse
chorus bridge build drop crescendo fade quality recording production produced mix mixed mastered
hifi stereo mono short long background video game film movie commercial podcast meditation yoga
workout study sleep relax cafe club festival concert street city nature forest space love heart
dream old young modern classic timeless male female kids children christmas holiday wedding
tropical desert mountain storm fire water wind
""".split()
_VOCABULARY: list[str] = list(dict.fromkeys(_SPECIALS + _WORDS))


def offline_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a fixed English/music vocabulary, made without any download.

    Lower-cases (after NFKC), splits on whitespace and punctuation, maps unknown words to ``<unk>``
    and appends ``</s>``; ids follow T5's conventions (pad 0, eos 1, unk 2). Only the first
    ``vocab_size`` entries of the vocabulary are used, so every id is ``< vocab_size`` (the text
    encoder's embedding size). It can be saved with ``save_pretrained(folder)`` and read back with
    ``AutoTokenizer.from_pretrained(folder)``.

    Args:
        vocab_size: number of ids the text encoder embeds (at least 4).

    Returns:
        A ``PreTrainedTokenizerFast``; ``tok(texts, return_tensors="pt", padding=True)`` gives
        ``input_ids`` and ``attention_mask`` of shape ``[B, L]`` (right padding).

    >>> tok = offline_tokenizer(600)
    >>> tok(["Jazz, with piano!"])["input_ids"]      # jazz , with piano ! </s>
    [[118, 3, 21, 213, 6, 1]]
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # lazy: transformers is loaded only where it is used
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(_SPECIALS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: the tokenizer needs its "
                         f"{len(_SPECIALS)} special ids and at least one word")
    vocab = {w: i for i, w in enumerate(_VOCABULARY[:vocab_size])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512, padding_side="right")


def hf_musicgen_config(scale: str = "tiny") -> MusicgenConfig:
    """The ``MusicgenConfig`` of an architecture in :data:`HF_ARCHITECTURES` (no weights).

    The pad, bos and decoder-start tokens are all ``vocab_size`` (the extra embedding row), on the
    decoder config and on the top config, as in the released checkpoints.

    >>> hf_musicgen_config("small").decoder.num_hidden_layers
    24
    """
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config  # lazy: transformers is loaded only where it is used

    if scale not in HF_ARCHITECTURES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {list(HF_ARCHITECTURES)}")
    arch = HF_ARCHITECTURES[scale]
    special = arch["decoder"]["vocab_size"]
    with _quiet_special_token_warnings():
        decoder = MusicgenDecoderConfig(**arch["decoder"], pad_token_id=special, bos_token_id=special,
                                        decoder_start_token_id=special)
        config = MusicgenConfig(text_encoder=T5Config(**arch["text_encoder"]),
                                audio_encoder=EncodecConfig(**arch["audio_encoder"]), decoder=decoder)
        config.pad_token_id = config.bos_token_id = config.decoder_start_token_id = special
    return config


def _generation_config(vocab_size: int) -> Any:
    """Sampling settings of the released checkpoints' ``generation_config.json``."""
    from transformers import GenerationConfig  # lazy: transformers is loaded only where it is used
    return GenerationConfig(do_sample=True, guidance_scale=3.0, top_k=min(250, vocab_size),
                            max_length=1500, pad_token_id=vocab_size, bos_token_id=vocab_size,
                            decoder_start_token_id=vocab_size)


def randomize_codebooks(encodec: torch.nn.Module, seed: int) -> None:
    """Fill every codebook of a transformers ``EncodecModel`` with seeded random vectors, in place.

    A random-init transformers EnCodec has all-zero codebooks, so every code decodes to the same
    audio. Each codebook ``embed`` ``[codebook_size, codebook_dim]`` gets values uniform in
    ``±sqrt(6 / codebook_dim)`` (audiocraft's Kaiming-uniform codebook init); the EMA state kept beside
    it stays consistent: ``embed_avg = embed``, ``cluster_size = 1`` (so ``embed_avg / cluster_size ==
    embed``) and ``inited = True``. Uses its own generator: the global RNG is not touched.

    Args:
        encodec: ``model.audio_encoder`` of a ``MusicgenForConditionalGeneration`` (or any
            transformers ``EncodecModel``).
        seed: the codebooks depend only on this.

    >>> model, _ = build_hf_musicgen("tiny")
    >>> randomize_codebooks(model.audio_encoder, seed=1)    # new codebooks, same network
    """
    layers = getattr(getattr(encodec, "quantizer", None), "layers", None)
    if layers is None:
        hint = " (pass model.audio_encoder)" if hasattr(encodec, "audio_encoder") else ""
        raise TypeError(f"expected a transformers EncodecModel with .quantizer.layers{hint}; got "
                        f"{type(encodec).__name__}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            book = layer.codebook
            size, dim = book.embed.shape
            bound = math.sqrt(6.0 / dim)
            embed = (torch.rand(size, dim, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            book.embed.copy_(embed)
            book.embed_avg.copy_(embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)


def build_hf_musicgen(scale: str = "tiny", seed: int = 0, *, device: str | torch.device = "cpu",
                      ) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerBase]:
    """A transformers MusicGen of a released architecture with seeded random weights, offline.

    Built from :func:`hf_musicgen_config` only (no hub), codebooks filled by
    :func:`randomize_codebooks`, generation settings as the released models (sampling, top-k
    ``min(250, vocab)``, guidance 3.0, ``max_length`` 1500); eval mode.

    Args:
        scale: ``"tiny"`` (for tests), ``"small"`` (24 x 1024 decoder, t5-base), ``"medium"``
            (48 x 1536, t5-large) or ``"large"`` (48 x 2048, t5-large).
        seed: the weights depend only on this; the global torch RNG is left as it was.
        device: where the model is returned.

    Returns:
        ``(model, tokenizer)``; the tokenizer is :func:`offline_tokenizer` sized to the text encoder.
        ``model.generate(**tokenizer(texts, return_tensors="pt", padding=True),
        max_new_tokens=N + 3)`` gives audio ``[B, 1, N * hop]`` with ``hop = sampling_rate /
        frame_rate`` (640 at every scale).

    >>> model, tok = build_hf_musicgen("tiny", seed=0)
    >>> model.config.decoder.num_hidden_layers, model.config.audio_encoder.frame_rate
    (2, 25)
    """
    from transformers import MusicgenForConditionalGeneration  # lazy: transformers is loaded only where it is used

    config = hf_musicgen_config(scale)
    with _quiet_special_token_warnings(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
    randomize_codebooks(model.audio_encoder, seed)
    model.generation_config = _generation_config(config.decoder.vocab_size)
    tokenizer = offline_tokenizer(config.text_encoder.vocab_size)
    return model.to(device).eval(), tokenizer


def load_hf_musicgen(name: str, *, device: str | torch.device = "cpu",
                     ) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerBase]:
    """Load a text-conditioned transformers MusicGen and its tokenizer, weights from safetensors.

    Args:
        name: a hub id (``"facebook/musicgen-small"``, ``-medium``, ``-large``; read from the local
            Hugging Face cache when ``HF_HUB_OFFLINE=1``) or a local folder written by
            ``model.save_pretrained(folder)`` and ``tokenizer.save_pretrained(folder)`` (config.json,
            model.safetensors or its shards, tokenizer files).
        device: where the model is returned (eval mode).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        MissingWeightsError: the config, weights or tokenizer cannot be found or fetched, or a
            weight file is corrupt or incomplete (the file is named); the message says how to
            provide them and which models work offline.
        NotImplementedError: a melody checkpoint (``MusicgenMelody*``): this backend supports
            text-only MusicGen; use the audiocraft backend.

    >>> model, tok = build_hf_musicgen("tiny")
    >>> model.save_pretrained("outputs/tiny-hf"); _ = tok.save_pretrained("outputs/tiny-hf")
    >>> model, tok = load_hf_musicgen("outputs/tiny-hf")
    """
    from transformers import AutoConfig, MusicgenForConditionalGeneration  # lazy: transformers is loaded only where it is used

    folder = Path(os.path.expanduser(name))
    is_dir = folder.is_dir()
    if not is_dir:
        if _looks_like_path(name) or folder.exists():
            raise _missing_weights(f"{name!r} is not a folder. " + _how_to_provide(name))
        if "melody" in name.lower():
            raise NotImplementedError(_melody_message(name))
    else:
        _check_local_folder(folder)
    source = str(folder) if is_dir else name

    errors = _load_errors()
    with _quiet_special_token_warnings():
        try:
            config = AutoConfig.from_pretrained(source)
        except errors as e:
            raise _missing_weights(_missing_message(name, e)) from e
        if config.model_type == "musicgen_melody":
            raise NotImplementedError(_melody_message(name))
        if config.model_type != "musicgen":
            raise ValueError(f"{name!r} holds a {config.model_type!r} model, not a MusicGen "
                             "(its config.json must have model_type 'musicgen')")
        try:
            model = MusicgenForConditionalGeneration.from_pretrained(source, config=config,
                                                                     use_safetensors=True)
        except errors as e:
            raise _missing_weights(_missing_message(name, e)) from e
        tokenizer = _load_tokenizer(source)
    return model.to(device).eval(), tokenizer


# -- helpers -------------------------------------------------------------------------------------------

def _missing_weights(message: str) -> Exception:
    """:class:`mstools.core.errors.MissingWeightsError` with ``message``."""
    return MissingWeightsError(message)


_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # fast (any) or sentencepiece (T5)


def _load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside the weights; refuses to make one up from the config.

    (Without tokenizer files, ``AutoTokenizer`` builds an empty T5 tokenizer from the text encoder's
    config that maps every word to ``<unk>``: prompts would silently be ignored.)
    """
    from transformers import AutoTokenizer  # lazy: transformers is loaded only where it is used
    from transformers.utils import cached_file

    def need() -> str:
        return (f"; the folder or repo needs {' or '.join(_TOKENIZER_FILES)} with "
                "tokenizer_config.json (tokenizer.save_pretrained(folder)). " + _how_to_provide(name))

    found = [cached_file(name, f, _raise_exceptions_for_missing_entries=False,
                         _raise_exceptions_for_connection_errors=False) for f in _TOKENIZER_FILES]
    if not any(found):
        raise _missing_weights(f"the tokenizer files of {name!r} were not found" + need())
    try:
        return AutoTokenizer.from_pretrained(name)
    except (*_load_errors(), ValueError) as e:
        raise _missing_weights(f"the tokenizer of {name!r} could not be loaded ({_short(e)})"
                                  + need()) from e


def _load_errors() -> tuple[type[BaseException], ...]:
    return (OSError, SafetensorError)


def _short(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _how_to_provide(name: str) -> str:
    is_hub_id = "/" in name and not _looks_like_path(name) and not Path(name).exists()
    hub_id = name if is_hub_id else "facebook/musicgen-small"
    return (
        "To use a released checkpoint with the transformers backend, either:\n"
        f"  - run `hf download {hub_id}` once where the Hugging Face Hub is reachable (the folder "
        "holds the T5 text encoder and EnCodec too), then set HF_HUB_OFFLINE=1 so it is read from "
        "the cache; or\n"
        "  - pass a local folder with config.json, model.safetensors (or its shards with "
        "model.safetensors.index.json) and the tokenizer files (tokenizer.json, "
        "tokenizer_config.json), as written by model.save_pretrained(folder) and "
        "tokenizer.save_pretrained(folder).\n"
        "Offline, without weights: the embedded testbed, load_musicgen('testbed', "
        "backend='transformers'), or random weights at the real size, build_musicgen('small', "
        "backend='transformers').")


def _missing_message(name: str, err: BaseException | None = None) -> str:
    why = f" ({_short(err)})" if err is not None else ""
    return f"could not get the weights of {name!r}{why}.\n" + _how_to_provide(name)


def _melody_message(name: str) -> str:
    return (f"{name!r} is a MusicGen melody checkpoint (MusicgenMelodyForConditionalGeneration): the "
            "transformers backend supports text-only MusicGen (facebook/musicgen-small, -medium, "
            "-large). Use the audiocraft backend for melody: load_musicgen('facebook/musicgen-melody').")


def _check_local_folder(folder: Path) -> None:
    """Raise MissingWeightsError naming the first missing or unreadable file of a checkpoint folder."""
    config_f = folder / "config.json"
    if not config_f.is_file():
        audiocraft = (folder / "state_dict.bin").is_file()
        hint = (" It holds audiocraft's state_dict.bin: load it with the audiocraft backend, "
                f"load_musicgen({str(folder)!r}).") if audiocraft else ""
        raise _missing_weights(f"{config_f} is missing: a transformers MusicGen folder holds "
                                  f"config.json.{hint} " + _how_to_provide(str(folder)))
    try:
        model_type = json.loads(config_f.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise _missing_weights(f"{config_f} could not be read ({_short(e)}). "
                                  + _how_to_provide(str(folder))) from e
    if model_type == "musicgen_melody":
        raise NotImplementedError(_melody_message(str(folder)))
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise _missing_weights(f"{index} could not be read ({_short(e)}): the file may be "
                                      "corrupt or half-written; write or fetch it again.") from e
        files = [folder / s for s in shards]
    else:
        pickled = [p.name for p in folder.glob("*.bin")]
        also = (f" ({', '.join(pickled)} is not read: pickled weights can run code; convert with "
                "model.save_pretrained(folder, safe_serialization=True))") if pickled else ""
        raise _missing_weights(f"{single} is missing{also}. " + _how_to_provide(str(folder)))
    for f in files:
        _check_safetensors(f)


def _check_safetensors(path: Path) -> None:
    """Open a safetensors file's header; its size must match what the header declares."""
    if not path.is_file():
        raise _missing_weights(f"{path} is missing (listed in model.safetensors.index.json); "
                                  "write or fetch the checkpoint again.")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (OSError, SafetensorError) as e:
        raise _missing_weights(
            f"{path} could not be read ({_short(e)}): the file is corrupt or half-written "
            "(delete it and write or fetch it again).") from e


class _SpecialTokenWarningFilter(logging.Filter):
    """Drops transformers' 'pad_token_id must be within the vocabulary' warning for MusicGen.

    MusicGen's special token is the extra embedding row ``vocab_size``, valid by design
    (``MusicgenDecoderConfig`` allows it); the composite ``MusicgenConfig`` checks the decoder's ids
    with the generic ``< vocab_size`` rule and warns about the released checkpoints too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Model config: ") and "_token_id must be" in msg)


@contextlib.contextmanager
def _quiet_special_token_warnings() -> Iterator[None]:
    logger = logging.getLogger("transformers.configuration_utils")
    filt = _SpecialTokenWarningFilter()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)
