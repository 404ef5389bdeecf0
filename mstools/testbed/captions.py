"""Training captions: noisy, partial, paraphrased descriptions of procedural clips.

Real captions are evidence, not law: they leave things out, use other words and are sometimes wrong.
The testbed is trained on captions made here, so a prompt is strong evidence the model weighs
against the audio context (and steering can act against a prompt), not a switch it always obeys.

What :func:`noisy_caption` does to the true labels, per clip:

- each factor is mentioned with probability ``mention_prob``;
- a mentioned factor names a **wrong** value (uniform over the others) with probability
  ``wrong_prob`` (a number, or one per factor); a mentioned genre also names the genre that sounds most alike (same scale and
  drum kit, :data:`SIMILAR_GENRE`: only the order cues differ) with probability ``similar_prob``;
- label words are replaced by a synonym with probability ``synonym_prob`` (:data:`SYNONYMS`;
  every synonym belongs to exactly one label);
- filler words (an article, a noun such as "track", "with" / "featuring" / "and" before the
  instrument) and the order of the two adjectives vary.

:func:`compose_prompt` in :mod:`.music` makes the clean canonical prompt of a clip
("soft fast jazz with piano"); :func:`canonical_words` lists the words such prompts use.

Example:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> caption, named = noisy_caption({"genre": "rock", "tempo": "fast", "instrument": "brass",
...                                 "dynamics": "loud"}, rng)
>>> sorted(named) == sorted(set(named))      # factor -> value the caption names (maybe wrong)
True
"""
from __future__ import annotations

import numpy as np

from mstools.testbed.music import FACTORS, GENRE_SPEC, GENRES

__all__ = ["SYNONYMS", "SIMILAR_GENRE", "NOUNS", "ARTICLES", "LINKS", "FILLER_WORDS", "CAPTION_WORDS", "label_of_word",
           "noisy_caption"]

#: Words that name a label: the label itself first, then synonyms (each word names one label only).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "rocking"),
    "jazz": ("jazz", "jazzy"),
    "classical": ("classical", "baroque"),
    "electronic": ("electronic", "electro", "edm"),
    "slow": ("slow", "unhurried", "leisurely"),
    "fast": ("fast", "quick", "upbeat"),
    "piano": ("piano", "keys"),
    "brass": ("brass", "horns", "trumpet"),
    "strings": ("strings", "violins"),
    "synth": ("synth", "synthesizer"),
    "soft": ("soft", "quiet", "gentle"),
    "loud": ("loud", "powerful", "intense"),
}
NOUNS: tuple[str, ...] = ("music", "track", "song", "tune", "piece", "instrumental")
ARTICLES: tuple[str, ...] = ("a", "an", "the", "some")
LINKS: tuple[str, ...] = ("with", "featuring", "and", "on", "played", "by")
#: Words that carry no label.
FILLER_WORDS: tuple[str, ...] = tuple(dict.fromkeys(NOUNS + ARTICLES + LINKS + ("style", "of", "in")))
#: Every word a training caption can contain.
CAPTION_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    [w for values in FACTORS.values() for v in values for w in SYNONYMS[v]] + list(FILLER_WORDS)))

#: genre -> the genre with the same scale and drum kit (they differ in order cues only)
SIMILAR_GENRE: dict[str, str] = {
    g: next(h for h in GENRES if h != g and (GENRE_SPEC[h].scale, GENRE_SPEC[h].drum_cycle[0])
            == (GENRE_SPEC[g].scale, GENRE_SPEC[g].drum_cycle[0])) for g in GENRES}

_WORD_TO_LABEL = {w: (f, v) for f, values in FACTORS.items() for v in values for w in SYNONYMS[v]}


def label_of_word(word: str) -> tuple[str, str] | None:
    """``(factor, label)`` a caption word names, or None for a filler word.

    >>> label_of_word("horns"), label_of_word("track")
    (('instrument', 'brass'), None)
    """
    return _WORD_TO_LABEL.get(word)


def _word(label: str, rng: np.random.Generator, synonym_prob: float) -> str:
    words = SYNONYMS[label]
    if len(words) > 1 and rng.random() < synonym_prob:
        return str(words[1 + rng.integers(len(words) - 1)])
    return words[0]


def noisy_caption(labels: dict[str, str], rng: np.random.Generator, *, mention_prob: float = 0.7,
                  wrong_prob: float | dict[str, float] = 0.15, similar_prob: float = 0.0,
                  synonym_prob: float = 0.25) -> tuple[str, dict[str, str]]:
    """A training caption of a clip with ``labels``; see the module docstring for the noise.

    Returns:
        ``(caption, named)``: the caption (1 to 10 words, all in :data:`CAPTION_WORDS`) and the
        value it names per mentioned factor (differs from ``labels`` where the caption is wrong).
    """
    named: dict[str, str] = {}
    for factor, values in FACTORS.items():
        if rng.random() >= mention_prob:
            continue
        value = labels[factor]
        if rng.random() < (wrong_prob[factor] if isinstance(wrong_prob, dict) else wrong_prob):
            others = [v for v in values if v != value]
            value = others[int(rng.integers(len(others)))]
        elif factor == "genre" and similar_prob > 0 and rng.random() < similar_prob:
            value = SIMILAR_GENRE[value]
        named[factor] = value
    words: list[str] = []
    if rng.random() < 0.25:
        words.append(str(ARTICLES[rng.integers(len(ARTICLES))]))
    adjectives = [_word(named[f], rng, synonym_prob) for f in ("dynamics", "tempo") if f in named]
    if len(adjectives) == 2 and rng.random() < 0.5:
        adjectives.reverse()
    words += adjectives
    instrument = _word(named["instrument"], rng, synonym_prob) if "instrument" in named else None
    if instrument is not None and rng.random() < 0.25:       # "piano jazz", "horns track"
        words.append(instrument)
        instrument = None
    if "genre" in named:
        words.append(_word(named["genre"], rng, synonym_prob))
    if rng.random() < (0.3 if "genre" in named else 0.6) or not words:
        words.append(str(NOUNS[rng.integers(len(NOUNS))]))
    if instrument is not None:
        if rng.random() < 0.75:
            words.append("with" if rng.random() < 0.6 else str(LINKS[1 + rng.integers(len(LINKS) - 1)]))
        words.append(instrument)
    return " ".join(words), named
