"""The testbed's ``SynthCodec`` as a transformers ``EncodecModel`` (config + weights, no custom code).

Decoder (codes -> audio), written down from the synth, exact to float rounding for every token the
grammar uses (pitch < 24, timbre < 8; all drums and all loudness tokens):

- quantizer: codebook ``k`` token ``c`` is the unit vector ``e[32 k + c]`` of the 128-dim latent, so the
  latent of a frame is its four one-hots side by side;
- first convolution + ELU: one channel per (pitch, timbre) pair and one per drum token, with
  pre-activation ``ln gain[l] - A0 + M * (matches - needed)``: ELU's exponential branch gives
  ``gain[l] * exp(-A0) - 1`` on the active pair / drum and ``-1`` elsewhere (``M = 40``); a constant
  channel cancels the ``-1``s. So ``gain * (voice + drum)`` is a linear function of these channels;
- the first transposed convolution (stride 16) writes that function: each of its 16 output positions
  carries 100 samples of the frame as channels (plus an offset that keeps later ELUs linear); the
  next four (strides 2, 2, 5, 5) only move samples from channels to time; the last convolution
  removes the offset. Residual blocks and the LSTM have zero weights (identity).

Pairs outside the grammar (pitch >= 24 or timbre >= 8) have no channel: their voice is silent (drums
and loudness are still exact). :func:`decoder_snr` measures both.

Encoder (audio -> codes): its convolutions gather each 1600-sample frame (written down, exact), and
the per-frame head it ends with (last strided convolution, LSTM used as a per-frame layer, final
convolution: four blocks of 32 scores, the quantizer takes the best of each) is trained on synth
renders (:mod:`mstools.testbed.train_encodec`; weights ``weights/encodec_head.safetensors``).
:func:`encode_accuracy` measures it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mstools.testbed.codec import GAIN_DB, SynthCodec
from safetensors.torch import load_file
from mstools.core.fileio import sha256_file
from mstools.testbed.model import WEIGHTS_DIR
from mstools.testbed.train_encodec import HEAD_FILE, HEAD_MANIFEST

__all__ = ["encodec_config", "synth_encodec", "decoder_snr", "encode_accuracy", "grammar_voice_pairs",
           "M_GATE", "RATIOS"]

#: decoder upsampling ratios (product = 1600 samples per frame at 16 kHz)
RATIOS = (16, 2, 2, 5, 5)
M_GATE = 40.0
_FILTERS = 8          # widest layer: 2 ** len(RATIOS) * 8 = 256 channels


def grammar_voice_pairs(card: int = 32) -> list[tuple[int, int]]:
    """(pitch, timbre) pairs the decoder renders exactly: the grammar's pitches 0-23, timbres 0-7."""
    return [(p, t) for p in range(min(24, card)) for t in range(min(8, card))]


def encodec_config(sample_rate: int = 16000, card: int = 32, codebooks: int = 4) -> Any:
    """``EncodecConfig`` of the testbed codec: 10 frames/s, 4 codebooks of 32, latent 128."""
    from transformers import EncodecConfig  # lazy: transformers is loaded only where it is used
    hop = int(np.prod(RATIOS))
    frame_rate = sample_rate / hop
    bandwidth = codebooks * math.log2(card) * frame_rate / 1000.0
    return EncodecConfig(
        sampling_rate=sample_rate, audio_channels=1, upsampling_ratios=list(RATIOS),
        num_filters=_FILTERS, hidden_size=codebooks * card, codebook_size=card,
        target_bandwidths=[bandwidth], num_lstm_layers=1, num_residual_layers=1, kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=False,
        pad_mode="reflect", compress=2, normalize=False, chunk_length_s=None, overlap=None,
        norm_type="weight_norm", trim_right_ratio=1.0, use_conv_shortcut=False)


def _set_conv(wrapper: Any, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Set a weight-normed conv (``EncodecConv1d`` / ``EncodecConvTranspose1d``) to ``weight``.

    ``weight = g * v / ||v||`` per slice of dim 0; an all-zero slice gets ``g = 0``, ``v = 1``.
    """
    conv = wrapper.conv
    p = conv.parametrizations.weight
    w = weight.to(torch.float64)
    norm = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
    v = torch.where(norm > 0, w, torch.ones_like(w))
    with torch.no_grad():
        p.original0.copy_(norm.to(p.original0.dtype))
        p.original1.copy_(v.to(p.original1.dtype))
        conv.bias.copy_(torch.zeros(conv.bias.shape) if bias is None else bias.to(conv.bias.dtype))


def _zero_resblock(block: Any) -> None:
    for layer in block.block:
        if hasattr(layer, "conv"):
            _set_conv(layer, torch.zeros_like(layer.conv.weight))


def _set_lstm(lstm: Any, weight_ih: torch.Tensor | None = None, bias_ih: torch.Tensor | None = None) -> None:
    """A one-layer LSTM as a per-frame layer: no recurrent weights; zeros unless given."""
    with torch.no_grad():
        for name, param in lstm.lstm.named_parameters():
            param.zero_()
        if weight_ih is not None:
            lstm.lstm.weight_ih_l0.copy_(weight_ih)
            lstm.lstm.bias_ih_l0.copy_(bias_ih)


def _stages(layers: Any, kind: type) -> list:
    return [m for m in layers if isinstance(m, kind)]


def synth_encodec(codec: Any = None, head: dict[str, torch.Tensor] | None = None,
                  weights_dir: str | Path | None = None) -> Any:
    """A transformers ``EncodecModel`` that decodes the testbed's codes as ``SynthCodec`` does
    (exactly for the grammar's tokens) and encodes synth audio with the trained head.

    Args:
        codec: the :class:`~mstools.testbed.codec.SynthCodec` (default: a new one).
        head: the encoder head's state dict (default: ``weights/encodec_head.safetensors``).
        weights_dir: where the head is read from (default: the testbed's weights folder).
    """
    from transformers import EncodecModel  # lazy: transformers is loaded only where it is used
    from transformers.models.encodec.modeling_encodec import (EncodecConv1d, EncodecConvTranspose1d,  # lazy: transformers is loaded only where it is used
                                                              EncodecLSTM, EncodecResnetBlock)
    codec = codec or SynthCodec()
    card, hop = codec.cardinality, codec.hop
    config = encodec_config(codec.sample_rate, card, codec.num_codebooks)
    if int(np.prod(RATIOS)) != hop:
        raise ValueError(f"the synth's hop {hop} is not {int(np.prod(RATIOS))} samples")
    with torch.random.fork_rng(devices=[]):
        model = EncodecModel(config).eval()
    latent = config.hidden_size
    width = _FILTERS * 2 ** len(RATIOS)

    # ---- quantizer: token c of codebook k is e[k * card + c]
    for k, layer in enumerate(model.quantizer.layers):
        embed = torch.zeros(card, latent)
        embed[torch.arange(card), k * card + torch.arange(card)] = 1.0
        book = layer.codebook
        book.embed.copy_(embed)
        book.embed_avg.copy_(embed)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)

    # ---- decoder
    voice = codec.voice.double()                       # [P, I, hop]
    drum = codec.drum.double()                         # [D, hop]
    log_gain = torch.from_numpy(GAIN_DB[:card] * math.log(10) / 20)   # ln gain[l]
    a0 = float(log_gain.max())
    pairs = grammar_voice_pairs(card)
    n_voice, n_drum = len(pairs), card
    const = n_voice + n_drum
    if const + 1 > width:
        raise ValueError("too many channels for the decoder's width")
    dec = model.decoder.layers
    convs = _stages(dec, EncodecConv1d)
    first, last = convs[0], convs[-1]
    w1 = torch.zeros(width, latent, 7, dtype=torch.float64)
    b1 = torch.zeros(width, dtype=torch.float64)
    loud = slice(3 * card, 4 * card)
    for c, (p, t) in enumerate(pairs):
        w1[c, p, 3] = M_GATE
        w1[c, card + t, 3] = M_GATE
        w1[c, loud, 3] = log_gain - a0
        b1[c] = -2 * M_GATE
    for d in range(n_drum):
        c = n_voice + d
        w1[c, 2 * card + d, 3] = M_GATE
        w1[c, loud, 3] = log_gain - a0
        b1[c] = -M_GATE
    b1[const] = 1.0                                     # ELU(1) = 1: the constant channel
    _set_conv(first, w1, b1)
    _set_lstm(_stages(dec, EncodecLSTM)[0])
    for block in _stages(dec, EncodecResnetBlock):
        _zero_resblock(block)
    waves = torch.zeros(width, hop, dtype=torch.float64)   # what each channel's (ELU + 1) renders
    for c, (p, t) in enumerate(pairs):
        waves[c] = math.exp(a0) * voice[p, t]
    waves[n_voice:const] = math.exp(a0) * drum
    waves[const] = waves[:const].sum(0)                  # cancels the -1 of every gated channel
    peak = math.exp(a0) * float(voice.abs().max() + drum.abs().max())
    offset = float(math.ceil(peak + 1.0))
    ups = _stages(dec, EncodecConvTranspose1d)
    block = hop
    for s, (conv, r) in enumerate(zip(ups, RATIOS)):
        cin, cout = conv.conv.in_channels, conv.conv.out_channels
        pl = r - r // 2
        w = torch.zeros(cin, cout, 2 * r, dtype=torch.float64)
        sub = block // r
        if cout < sub:
            raise ValueError(f"stage {s}: {sub} samples do not fit {cout} channels")
        bias = torch.zeros(cout, dtype=torch.float64)
        if s == 0:
            for j in range(r):
                w[:, :sub, j + pl] = waves[:, j * sub:(j + 1) * sub]
            bias[:sub] = offset
        else:
            for j in range(r):
                for i in range(sub):
                    w[j * sub + i, i, j + pl] = 1.0
        _set_conv(conv, w, bias)
        block = sub
    wl = torch.zeros(1, last.conv.in_channels, 7, dtype=torch.float64)
    wl[0, 0, 3] = 1.0
    _set_conv(last, wl, torch.tensor([-offset], dtype=torch.float64))

    # ---- encoder: gather each frame's samples, then the trained head
    enc = model.encoder.layers
    econvs = _stages(enc, EncodecConv1d)
    for blk in _stages(enc, EncodecResnetBlock):
        _zero_resblock(blk)
    w0 = torch.zeros(econvs[0].conv.out_channels, 1, 7, dtype=torch.float64)
    w0[0, 0, 3] = 1.0
    _set_conv(econvs[0], w0, torch.tensor([offset] + [0.0] * (w0.shape[0] - 1), dtype=torch.float64))
    block = 1
    down = list(reversed(RATIOS))
    if head is None:
        head = _load_head(weights_dir)
    for s, (conv, r) in enumerate(zip(econvs[1:-1], down)):
        cin, cout = conv.conv.in_channels, conv.conv.out_channels
        pl = r - r // 2
        w = torch.zeros(cout, cin, 2 * r, dtype=torch.float64)
        bias = torch.zeros(cout, dtype=torch.float64)
        if s < len(down) - 1:
            if block * r > cout:
                raise ValueError(f"encoder stage {s}: {block * r} samples do not fit {cout} channels")
            for j in range(r):
                for i in range(block):
                    w[j * block + i, i, j + pl] = 1.0
        else:  # frame -> the head's linear map (minus what the offset adds)
            lin = head["inp.weight"].double()          # [hidden, hop]
            hidden = lin.shape[0]
            for j in range(r):
                w[:hidden, :block, j + pl] = lin[:, j * block:(j + 1) * block]
            bias[:hidden] = head["inp.bias"].double() - offset * lin.sum(1)
        _set_conv(conv, w, bias)
        block *= r
    hidden = head["inp.weight"].shape[0]
    lstm = _stages(enc, EncodecLSTM)[0]
    wih = torch.zeros(4 * width, width)
    bih = torch.zeros(4 * width)
    for g in range(4):   # PyTorch's gate order i, f, g, o; the head's hidden units come first
        wih[g * width:g * width + hidden, :hidden] = head["gates.weight"][g * hidden:(g + 1) * hidden]
        bih[g * width:g * width + hidden] = head["gates.bias"][g * hidden:(g + 1) * hidden]
    bih[width:2 * width] = -100.0                       # forget gate shut: no memory across frames
    _set_lstm(lstm, wih, bih)
    wo = torch.zeros(latent, width, 7, dtype=torch.float64)
    wo[:, :hidden, 3] = head["out.weight"].double()
    _set_conv(econvs[-1], wo, head["out.bias"].double())
    return model.eval()


def _load_head(weights_dir: str | Path | None) -> dict[str, torch.Tensor]:
    folder = Path(weights_dir or WEIGHTS_DIR)
    path, manifest = folder / HEAD_FILE, folder / HEAD_MANIFEST
    if not path.is_file() or not manifest.is_file():
        raise FileNotFoundError(f"{path} (or {manifest.name}) is missing: train it with "
                                "python -m mstools.testbed.train_encodec")
    expected = json.loads(manifest.read_text()).get("sha256")
    if sha256_file(path) != expected:
        raise ValueError(f"{path} does not match the sha256 in {manifest.name}: restore it "
                         "(git checkout) or retrain")
    return load_file(str(path))


# ----------------------------------------------------------------------------- measurements
def _snr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    err = (out.double() - ref.double()).pow(2).sum()
    return float(10 * torch.log10(ref.double().pow(2).sum() / err.clamp_min(1e-30)))


def decoder_snr(encodec: Any, codes: torch.Tensor, codec: Any = None) -> float:
    """SNR (dB) of ``encodec.decode(codes)`` against ``SynthCodec.decode(codes)`` over all clips."""
    codec = codec or SynthCodec()
    with torch.no_grad():
        ref = codec.decode(codes)
        out = encodec.decode(codes[None], [None]).audio_values
    return _snr_db(ref, out[..., :ref.shape[-1]])


def encode_accuracy(encodec: Any, codes: torch.Tensor, codec: Any = None) -> list[float]:
    """Share of tokens per codebook that ``encodec.encode`` reads back from ``SynthCodec`` renders."""
    codec = codec or SynthCodec()
    with torch.no_grad():
        got = encodec.encode(codec.decode(codes)).audio_codes[0]
    return [float(v) for v in (got == codes).float().mean(dim=(0, 2))]
