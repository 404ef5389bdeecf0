"""SynthCodec: audiocraft CompressionModel API, exact round trip, audible factors."""
import numpy as np
import pytest
import torch

from audiocraft.models.encodec import CompressionModel
from mstools.testbed.codec import SynthCodec
from mstools.testbed.music import make_dataset, sample_clip, stack_codes


@pytest.fixture(scope="module")
def codec():
    return SynthCodec()


def test_api_and_shapes(codec):
    assert isinstance(codec, CompressionModel)
    assert (codec.sample_rate, codec.frame_rate, codec.channels) == (16000, 10.0, 1)
    assert (codec.cardinality, codec.num_codebooks, codec.total_codebooks) == (32, 4, 4)
    codec.set_num_codebooks(4)
    with pytest.raises(ValueError):
        codec.set_num_codebooks(2)
    codes = torch.randint(0, 32, (3, 4, 7))
    wav = codec.decode(codes)
    assert wav.shape == (3, 1, 7 * 1600) and wav.dtype == torch.float32
    latent = codec.decode_latent(codes)
    assert latent.shape == (3, 4 * 32, 7)
    assert torch.equal(latent.reshape(3, 4, 32, 7).argmax(2), codes)
    assert codec.state_dict() == {} or len(codec.state_dict()) == 0   # no learned weights


def test_round_trip_exact_on_random_and_procedural_codes(codec):
    torch.manual_seed(0)
    random_codes = torch.randint(0, 32, (4, 4, 30))
    assert torch.equal(codec.encode(codec.decode(random_codes))[0], random_codes)
    clips = stack_codes(make_dataset(8, 60, seed=2))
    codes, scale = codec.encode(codec.decode(clips))
    assert scale is None and torch.equal(codes, clips)
    result = codec(codec.decode(clips))
    assert torch.equal(result.codes, clips) and torch.allclose(result.x, codec.decode(clips))


def test_bad_inputs_raise_clear_errors(codec):
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        codec.decode(torch.full((1, 4, 3), 32))
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.zeros(1, 2, 1600))
    foreign = torch.randn(2, 1, 4000) * 0.1                       # not a render: best effort
    codes, _ = codec.encode(foreign)
    assert codes.shape == (2, 4, 3) and int(codes.min()) >= 0 and int(codes.max()) < 32


def _spectrum(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    return freqs, spec


def test_pitch_tokens_sound_at_equal_tempered_pitch(codec):
    for pitch in (0, 7, 12, 23):
        codes = torch.tensor([[pitch] * 4, [7] * 4, [0] * 4, [20] * 4])[None]   # held synth, no drums
        freqs, spec = _spectrum(codec.decode(codes)[0, 0].numpy())
        expected = 261.6256 * 2 ** (pitch / 12)
        assert abs(freqs[spec.argmax()] - expected) < 6.0


def test_loudness_instruments_and_drums_are_audibly_different(codec):
    def render(**labels):
        return codec.decode(sample_clip(4, frames=40, **labels).codes[None])[0, 0].numpy()

    rms = lambda x: 20 * np.log10(np.sqrt(np.mean(x ** 2)))
    assert rms(render(dynamics="loud", instrument="piano")) - rms(render(dynamics="soft", instrument="piano")) > 10

    def centroid(x):
        freqs, spec = _spectrum(x)
        return (freqs * spec).sum() / spec.sum()

    def held_note(instrument_index):
        codes = torch.tensor([[12] * 4, [2 * instrument_index + 1] * 4, [0] * 4, [20] * 4])[None]
        return _spectrum(codec.decode(codes)[0, 0].numpy())[1]

    spectra = [held_note(i) for i in range(4)]                   # piano, brass, strings, synth
    for a in range(4):
        for b in range(a + 1, 4):
            cos = spectra[a] @ spectra[b] / np.linalg.norm(spectra[a]) / np.linalg.norm(spectra[b])
            assert cos < 0.95, (a, b, cos)                       # different harmonic recipes
    onset, held = (codec.voice[12, 4].abs()[:160].mean(), codec.voice[12, 5].abs()[:160].mean())  # strings
    assert onset < 0.5 * held                                    # a string onset swells from silence
    # drum kits differ: hat/snare kit is brighter on onsets than tom/rim kit
    kick_kit = codec.drum[[1, 2, 3]].numpy()
    tom_kit = codec.drum[[4, 5, 6]].numpy()
    assert np.all(np.abs(kick_kit).max(1) > 0.05) and np.all(np.abs(tom_kit).max(1) > 0.05)
    assert bool((codec.drum[0] == 0).all())
