"""Procedural music grammar: four codebook streams whose generating factors are known.

A clip is a LongTensor of codes ``[K=4, T]`` at ``FRAME_RATE`` frames per second, one token per
codebook and frame, every token in ``[0, CARD)``:

==========  ============  =====================================================================
codebook    holds         tokens used by the grammar
==========  ============  =====================================================================
0 pitch     sounding note semitones above C4 (``0..23``), from a major or a minor scale
1 timbre    instrument x  ``2 * instrument + (0 on a note onset | 1 on a held frame)``
            articulation
2 drums     drum hit      ``0`` none (held frames); kick/snare/hat (``1..3``) or tom/rim/shaker
                          (``4..6``) on every note onset
3 loudness  level         soft: onset ``10|11`` (plain|accent), held ``8|9``;
                          loud: onset ``20|21``, held ``18|19``
==========  ============  =====================================================================

Time: a note lasts ``NOTE_FRAMES[tempo]`` frames (slow 4, fast 2); four notes make a phrase.
A clip starts at a random phase (``offset`` frames into a phrase).

Genres are conjunctions of shared factors plus order cues:

==========  =======  ===========  ==================================  ========================
genre       scale    drum kit     drum cycle over a phrase            pitch run in a phrase
==========  =======  ===========  ==================================  ========================
rock        major    kick/snare   kick snare hat hat                  ascending steps
electronic  major    kick/snare   kick hat hat snare (rock reversed)  descending steps
classical   minor    tom/rim      tom rim shaker shaker               ascending steps
jazz        minor    tom/rim      tom shaker shaker rim               descending steps
==========  =======  ===========  ==================================  ========================

Every scale and drum kit is used by two genres, and within a pair the unigram histograms of all
codebooks are identical (up to clip-edge effects), so histograms narrow the genre to a pair and only
order (run direction, drum cycle order, which drum hit meets which scale degree) tells the pair
apart. Each phrase starts on a random scale degree, so the run direction cannot be read from the
current phrase's first note: a model must carry the genre across phrase boundaries.
Tempo, instrument and dynamics are independent of genre; any combination is valid.

Random choices (the grammar's probabilistic process, mirrored by :mod:`mstools.testbed.score`):
labels (uniform per factor), phase offset (uniform in ``[0, 4 * note_frames)``), start degree of
each phrase (uniform over the 11 degrees that keep the run in range), accent of each note (p=1/2).

Example:

>>> clip = sample_clip(0, frames=20, genre="rock", tempo="fast")
>>> clip.codes.shape, clip.labels["genre"], clip.labels["tempo"]
(torch.Size([4, 20]), 'rock', 'fast')
>>> sample_clip(0, frames=20).codes.equal(sample_clip(0, frames=20).codes)
True
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
import typing as tp

import numpy as np
import torch

__all__ = [
    "GENRES", "TEMPOS", "INSTRUMENTS", "DYNAMICS", "FACTORS", "CARD", "NUM_CODEBOOKS",
    "FRAME_RATE", "SAMPLE_RATE", "DATA_VERSION", "NOTE_FRAMES", "NOTES_PER_PHRASE", "SCALES",
    "GENRE_SPEC", "GenreSpec", "VOCABULARY", "Clip", "sample_clip", "sample_switch_clip", "make_dataset",
    "compose_prompt", "stack_codes", "render_codes", "reference_clips", "full_prompts",
]

DATA_VERSION = "2"

GENRES: tuple[str, ...] = ("rock", "jazz", "classical", "electronic")
TEMPOS: tuple[str, ...] = ("slow", "fast")
INSTRUMENTS: tuple[str, ...] = ("piano", "brass", "strings", "synth")
DYNAMICS: tuple[str, ...] = ("soft", "loud")
FACTORS: dict[str, tuple[str, ...]] = {
    "genre": GENRES, "tempo": TEMPOS, "instrument": INSTRUMENTS, "dynamics": DYNAMICS,
}

CARD = 32
NUM_CODEBOOKS = 4
CB_PITCH, CB_TIMBRE, CB_DRUMS, CB_LOUDNESS = 0, 1, 2, 3
FRAME_RATE = 10
SAMPLE_RATE = 16000

NOTE_FRAMES: dict[str, int] = {"slow": 4, "fast": 2}
NOTES_PER_PHRASE = 4
RUN_SPAN = NOTES_PER_PHRASE - 1  # a run covers 4 consecutive scale degrees

# Two octaves of scale degrees, as semitones above C4 (pitch token = semitone).
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11, 12, 14, 16, 17, 19, 21, 23),
    "minor": (0, 2, 3, 5, 7, 8, 10, 12, 14, 15, 17, 19, 20, 22),
}
NUM_DEGREES = 14
NUM_START_DEGREES = NUM_DEGREES - RUN_SPAN  # 11 starts keep a 4-note run inside the scale

DRUM_NONE = 0
DRUM_TOKENS: dict[str, int] = {"kick": 1, "snare": 2, "hat": 3, "tom": 4, "rim": 5, "shaker": 6}

# Loudness tokens: onset level per dynamics; +1 for an accent; held frames are 2 below the onset.
LOUDNESS_ONSET: dict[str, int] = {"soft": 10, "loud": 20}
LOUDNESS_HELD_DROP = 2
ACCENT_PROB = 0.5


@dataclass(frozen=True)
class GenreSpec:
    """What defines a genre: scale, drum cycle over the 4 notes of a phrase, run direction."""

    scale: str
    drum_cycle: tuple[int, int, int, int]
    direction: int  # +1 ascending runs, -1 descending runs


_K, _S, _H = DRUM_TOKENS["kick"], DRUM_TOKENS["snare"], DRUM_TOKENS["hat"]
_T, _R, _SH = DRUM_TOKENS["tom"], DRUM_TOKENS["rim"], DRUM_TOKENS["shaker"]
GENRE_SPEC: dict[str, GenreSpec] = {
    "rock": GenreSpec("major", (_K, _S, _H, _H), +1),
    "electronic": GenreSpec("major", (_K, _H, _H, _S), -1),
    "classical": GenreSpec("minor", (_T, _R, _SH, _SH), +1),
    "jazz": GenreSpec("minor", (_T, _SH, _SH, _R), -1),
}

# Words of the canonical prompts (compose_prompt): every label plus two fillers. The text encoder
# knows more words (synonyms and fillers of the training captions, mstools.testbed.captions).
FILLER_WORDS: tuple[str, ...] = ("with", "music")
VOCABULARY: tuple[str, ...] = GENRES + TEMPOS + INSTRUMENTS + DYNAMICS + FILLER_WORDS


@dataclass
class Clip:
    """One procedural clip.

    Attributes:
        codes: LongTensor ``[K, T]``, tokens in ``[0, CARD)``.
        labels: factor name -> label, e.g. ``{"genre": "rock", "tempo": "fast", ...}``.
        prompt: text description; each attribute is mentioned or omitted at random.
        offset: phase of frame 0 inside a phrase, in frames (hidden variable of the grammar).
        switch: for a clip made by :func:`sample_switch_clip`, ``{"factor", "frame", "to"}`` (the
            factor that changes, the first frame of the new value, the new value); else None.
            ``labels`` and ``prompt`` then describe the start of the clip.
    """

    codes: torch.Tensor
    labels: dict[str, str]
    prompt: str
    offset: int = 0
    switch: dict | None = None


def _rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer)):
        return np.random.default_rng(int(rng_or_seed))
    raise TypeError(f"expected a numpy Generator or an int seed, got {type(rng_or_seed).__name__}")


def _check_labels(labels: dict[str, str]) -> None:
    for factor, label in labels.items():
        if factor not in FACTORS:
            raise ValueError(f"unknown factor {factor!r}; factors are {list(FACTORS)}")
        if label not in FACTORS[factor]:
            raise ValueError(f"unknown {factor} {label!r}; choose one of {list(FACTORS[factor])}")


def compose_prompt(labels: dict[str, str], rng: np.random.Generator, mention_prob: float = 0.7) -> str:
    """Compose a prompt from label words, each attribute mentioned with ``mention_prob``.

    Shapes like "fast rock with brass", "soft classical piano", "jazz", "loud music".
    At most 6 words, all from :data:`VOCABULARY`.
    """
    mentioned = {f: bool(rng.random() < mention_prob) for f in FACTORS}
    adjectives = [labels[f] for f in ("dynamics", "tempo") if mentioned[f]]
    if len(adjectives) == 2 and rng.random() < 0.5:
        adjectives.reverse()
    words = list(adjectives)
    if mentioned["genre"]:
        words.append(labels["genre"])
    elif rng.random() < 0.5 or not words:
        words.append("music")
    if mentioned["instrument"]:
        if rng.random() < 0.5:
            words += ["with", labels["instrument"]]
        else:
            words.append(labels["instrument"])
    return " ".join(words)


def render_codes(labels: dict[str, str], frames: int, offset: int, start_degrees: np.ndarray,
                 accents: np.ndarray) -> np.ndarray:
    """Codes ``[K, frames]`` for given labels and hidden choices (the grammar's deterministic part).

    Args:
        labels: a full label set (all four factors).
        frames: number of frames T.
        offset: phase of frame 0, in ``[0, NOTES_PER_PHRASE * note_frames)``.
        start_degrees: int array, start degree of each phrase touched by the clip (index = phrase
            number counted from the phrase containing frame 0), values in ``[0, NUM_START_DEGREES)``
            (shifted up by 3 for descending runs).
        accents: 0/1 array, accent of each note touched by the clip (index = note number counted
            from the note containing frame 0).
    """
    spec = GENRE_SPEC[labels["genre"]]
    length = NOTE_FRAMES[labels["tempo"]]
    u = np.arange(frames) + offset
    note = u // length
    held = (u % length) != 0
    pos = note % NOTES_PER_PHRASE
    phrase = note // NOTES_PER_PHRASE
    first_note, first_phrase = note[0], phrase[0]

    start = start_degrees[phrase - first_phrase] + (RUN_SPAN if spec.direction < 0 else 0)
    degree = start + spec.direction * pos
    pitch = np.asarray(SCALES[spec.scale])[degree]
    timbre = 2 * INSTRUMENTS.index(labels["instrument"]) + held.astype(np.int64)
    drums = np.where(held, DRUM_NONE, np.asarray(spec.drum_cycle)[pos])
    onset_level = LOUDNESS_ONSET[labels["dynamics"]] + accents[note - first_note]
    loudness = onset_level - LOUDNESS_HELD_DROP * held
    return np.stack([pitch, timbre, drums, loudness]).astype(np.int64)


def sample_clip(rng_or_seed: np.random.Generator | int, frames: int, *, mention_prob: float = 0.7,
                **fixed_labels: str) -> Clip:
    """Sample one clip from the grammar; labels not fixed are drawn uniformly.

    Args:
        rng_or_seed: a ``numpy.random.Generator`` (advanced in place) or an int seed.
        frames: number of frames T (``FRAME_RATE`` per second).
        mention_prob: probability that the prompt mentions each attribute.
        **fixed_labels: e.g. ``genre="jazz", dynamics="soft"``.

    Returns:
        :class:`Clip` with ``codes`` LongTensor ``[4, frames]``.

    Example:
        >>> sample_clip(3, frames=40, instrument="brass").labels["instrument"]
        'brass'
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    _check_labels(fixed_labels)
    rng = _rng(rng_or_seed)
    labels = {f: fixed_labels.get(f) or str(values[rng.integers(len(values))])
              for f, values in FACTORS.items()}
    length = NOTE_FRAMES[labels["tempo"]]
    offset = int(rng.integers(NOTES_PER_PHRASE * length))
    codes = _render_random(labels, frames, offset, rng)
    prompt = compose_prompt(labels, rng, mention_prob)
    return Clip(torch.from_numpy(codes), labels, prompt, offset)


def _render_random(labels: dict[str, str], frames: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    """Codes for given labels and phase, with the hidden choices (start degrees, accents) drawn."""
    length = NOTE_FRAMES[labels["tempo"]]
    n_notes = (frames + offset - 1) // length + 1
    n_phrases = (frames + offset - 1) // (length * NOTES_PER_PHRASE) + 1
    start_degrees = rng.integers(NUM_START_DEGREES, size=n_phrases)
    accents = (rng.random(n_notes) < ACCENT_PROB).astype(np.int64)
    return render_codes(labels, frames, offset, start_degrees, accents)


def sample_switch_clip(rng_or_seed: np.random.Generator | int, frames: int, factor: str, *,
                       mention_prob: float = 0.7, earliest: float = 0.25, latest: float = 0.875,
                       **fixed_labels: str) -> Clip:
    """A clip whose ``factor`` changes once, at a phrase boundary (e.g. rock turning into jazz).

    Two grammar clips joined: the first (labels drawn as in :func:`sample_clip`) up to a phrase
    boundary chosen uniformly between ``earliest`` and ``latest`` of the clip, then a clip with
    ``factor`` set to another value (uniform), starting on a phrase boundary. Each part is a
    valid grammar clip (score the parts with ``score(codes, segment_seconds=...)``); the whole
    clip is not one. ``labels`` and ``prompt`` describe the start; ``switch`` holds the change.
    Without a phrase boundary in that range the clip does not switch (``switch`` is None).

    Example:
        >>> clip = sample_switch_clip(0, frames=64, factor="genre", genre="rock", tempo="fast")
        >>> clip.labels["genre"], clip.switch["factor"], clip.switch["to"] != "rock"
        ('rock', 'genre', True)
    """
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; factors are {list(FACTORS)}")
    rng = _rng(rng_or_seed)
    first = sample_clip(rng, frames, mention_prob=mention_prob, **fixed_labels)
    phrase = NOTES_PER_PHRASE * NOTE_FRAMES[first.labels["tempo"]]
    lo, hi = max(1, int(earliest * frames)), min(frames - 1, int(latest * frames))
    bounds = [f for f in range(lo, hi + 1) if (f + first.offset) % phrase == 0]
    if not bounds:
        return first
    at = int(bounds[rng.integers(len(bounds))])
    others = [v for v in FACTORS[factor] if v != first.labels[factor]]
    to = str(others[rng.integers(len(others))])
    rest = _render_random({**first.labels, factor: to}, frames - at, 0, rng)
    codes = torch.cat([first.codes[:, :at], torch.from_numpy(rest)], dim=1)
    return Clip(codes, first.labels, first.prompt, first.offset, {"factor": factor, "frame": at, "to": to})


def make_dataset(n: int, frames: int, seed: int, *, mention_prob: float = 0.7,
                 **fixed_labels: str) -> list[Clip]:
    """``n`` clips from one seeded generator (same seed -> same clips).

    Example:
        >>> clips = make_dataset(8, frames=30, seed=1)
        >>> stack_codes(clips).shape
        torch.Size([8, 4, 30])
    """
    rng = np.random.default_rng(seed)
    return [sample_clip(rng, frames, mention_prob=mention_prob, **fixed_labels) for _ in range(n)]


def stack_codes(clips: tp.Sequence[Clip]) -> torch.Tensor:
    """Stack clip codes into a LongTensor ``[B, K, T]`` (all clips must have the same T)."""
    lengths = {c.codes.shape[-1] for c in clips}
    if len(lengths) != 1:
        raise ValueError(f"clips have different lengths {sorted(lengths)}; crop them first")
    return torch.stack([c.codes for c in clips])


def reference_clips(n: int = 32, seconds: float = 6.0) -> tuple[torch.Tensor, list[str]]:
    """Procedural clips with their prompts that stand for the testbed's usual input (fixed seed).

    Activation norms (the unit of steering strength) are measured on them.

    Returns:
        ``(codes [n, K, T], prompts)`` with ``T = seconds * FRAME_RATE``.

    >>> codes, prompts = reference_clips(2, 1.0)
    >>> tuple(codes.shape), len(prompts)
    ((2, 4, 10), 2)
    """
    clips = make_dataset(n, frames=int(round(seconds * FRAME_RATE)), seed=12345)
    return stack_codes(clips), [c.prompt for c in clips]


def full_prompts() -> tuple[list[str], list[dict[str, str]]]:
    """The 64 prompts naming every factor, with their labels.

    >>> prompts, labels = full_prompts()
    >>> prompts[0], labels[0]["genre"]
    ('soft slow rock with piano', 'rock')
    """
    prompts, labels = [], []
    for dyn, tempo, genre, inst in itertools.product(DYNAMICS, TEMPOS, GENRES, INSTRUMENTS):
        prompts.append(f"{dyn} {tempo} {genre} with {inst}")
        labels.append({"genre": genre, "tempo": tempo, "instrument": inst, "dynamics": dyn})
    return prompts, labels
