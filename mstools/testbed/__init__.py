"""The testbed: a tiny MusicGen trained on procedural music whose generating factors are known.

- :mod:`.music`        the procedural grammar (genre, tempo, instrument, dynamics -> 4 code streams)
- :mod:`.codec`        ``SynthCodec``, a deterministic synthesiser on audiocraft's ``CompressionModel`` API
- :mod:`.conditioner`  word-level text conditioner (condition name ``description``)
- :mod:`.model`        ``build_testbed_musicgen`` (random weights) / ``load_testbed_musicgen`` (trained)
- :mod:`.score`        ``score``: labels and log-likelihood of codes under the grammar itself
- :mod:`.train`        ``python -m mstools.testbed.train``;  :mod:`.evaluate_testbed` measures adherence
- :mod:`.hf_model`     the testbed as a transformers ``MusicgenForConditionalGeneration`` (``python -m
  mstools export``): :mod:`.hf_text` (T5 text encoder + tokenizer), :mod:`.hf_codec` (EnCodec that
  decodes as ``SynthCodec``; its encoder head: ``python -m mstools.testbed.train_encodec``)

Example:

>>> from mstools.testbed import load_testbed_musicgen, score
>>> model = load_testbed_musicgen()
>>> wav, codes = model.generate(["fast rock with brass"], return_tokens=True)
>>> list(score(codes).columns[4:8])
['genre', 'tempo', 'instrument', 'dynamics']
"""
from mstools.testbed.codec import SynthCodec
from mstools.testbed.model import build_testbed_musicgen, load_testbed_musicgen
from mstools.testbed.music import (DYNAMICS, FACTORS, GENRES, INSTRUMENTS, TEMPOS, make_dataset,
                                   reference_clips, sample_clip)
from mstools.testbed.score import score

__all__ = [
    "GENRES", "TEMPOS", "INSTRUMENTS", "DYNAMICS", "FACTORS", "score", "SynthCodec", "sample_clip",
    "make_dataset", "reference_clips", "build_testbed_musicgen", "load_testbed_musicgen",
]
