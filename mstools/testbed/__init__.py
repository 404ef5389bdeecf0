"""The testbed: a tiny MusicGen trained on procedural music whose generating factors are known.

- :mod:`.music`        the procedural grammar (genre, tempo, instrument, dynamics -> 4 code streams)
- :mod:`.codec`        ``SynthCodec``, a deterministic synthesiser on audiocraft's ``CompressionModel`` API
- :mod:`.text`         the text encoder: a tiny transformers T5 encoder with a word-level tokenizer,
                       and the audiocraft conditioner around it (condition name ``description``)
- :mod:`.captions`     noisy training captions (left-out factors, synonyms, wrong values)
- :mod:`.model`        ``build_testbed_musicgen`` (random weights) / ``load_testbed_musicgen`` (trained)
- :mod:`.score`        ``score``: labels and log-likelihood of codes under the grammar itself
- :mod:`.train`        ``python -m mstools.testbed.train`` (``experiments/evaluate_testbed.py`` measures adherence);
                       :mod:`.check_v2` measures steering against a prompt and probe selectivity

Example:

>>> from mstools.testbed import load_testbed_musicgen, score
>>> model = load_testbed_musicgen()
>>> wav, codes = model.generate(["fast rock with brass"], return_tokens=True)
>>> score(codes).loc[0, ["genre", "tempo", "instrument"]].tolist()     # doctest: +SKIP
['rock', 'fast', 'brass']
"""
from mstools.testbed.codec import SynthCodec
from mstools.testbed.model import build_testbed_musicgen, load_testbed_musicgen, read_manifest, save_testbed_weights
from mstools.testbed.music import (DYNAMICS, FACTORS, GENRES, INSTRUMENTS, TEMPOS, make_dataset,
                                   reference_clips, sample_clip, sample_switch_clip)
from mstools.testbed.score import score
from mstools.testbed.text import load_text_encoder

__all__ = [
    "GENRES", "TEMPOS", "INSTRUMENTS", "DYNAMICS", "FACTORS", "score", "SynthCodec", "sample_clip",
    "sample_switch_clip", "make_dataset", "build_testbed_musicgen", "load_testbed_musicgen",
    "save_testbed_weights", "read_manifest", "load_text_encoder", "reference_clips",
]
