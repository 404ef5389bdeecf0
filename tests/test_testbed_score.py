"""The grammar scorer: label recovery, log-likelihood against a hand computation, segments, 'none'."""
import itertools
import math

import numpy as np
import pytest
import torch

from mstools.testbed.music import (
    CARD, DYNAMICS, FACTORS, GENRES, INSTRUMENTS, NOTE_FRAMES, NUM_START_DEGREES, TEMPOS, make_dataset,
    sample_clip, stack_codes,
)
from mstools.testbed.score import NOISE, score


def test_recovers_labels_of_fresh_clips():
    clips = make_dataset(300, 60, seed=987_654)
    df = score(stack_codes(clips))
    for factor in FACTORS:
        acc = np.mean(df[factor].to_numpy() == np.array([c.labels[factor] for c in clips]))
        assert acc >= 0.99, (factor, acc)
    assert (df.error_rate == 0).all()


def test_every_combination_of_labels_is_valid_and_recovered():
    for i, (g, t, ins, d) in enumerate(itertools.product(GENRES, TEMPOS, INSTRUMENTS, DYNAMICS)):
        clip = sample_clip(i, frames=40, genre=g, tempo=t, instrument=ins, dynamics=d)
        row = score(clip.codes).iloc[0]
        assert (row.genre, row.tempo, row.instrument, row.dynamics) == (g, t, ins, d)


def _manual_loglik(clip, frames, n_wrong=0):
    """log P(codes, true hidden choices) / T under the noisy grammar, computed from the definition."""
    length = NOTE_FRAMES[clip.labels["tempo"]]
    u = np.arange(frames) + clip.offset
    n_notes = len(np.unique(u // length))
    n_phrases = len(np.unique(u // (4 * length)))
    hit, miss = math.log(1 - NOISE + NOISE / CARD), math.log(NOISE / CARD)
    total = (-math.log(4) - math.log(2) - math.log(4) - math.log(2) - math.log(4 * length)
             - n_phrases * math.log(NUM_START_DEGREES) - n_notes * math.log(2)
             + (4 * frames - n_wrong) * hit + n_wrong * miss)
    return total / frames


def test_loglik_matches_hand_computation():
    for seed in range(6):
        clip = sample_clip(seed, frames=50)
        assert score(clip.codes).loglik[0] == pytest.approx(_manual_loglik(clip, 50), abs=1e-9)
        wrong = clip.codes.clone()
        wrong[3, 20] = 31                          # loudness 31 is never produced by the grammar
        assert score(wrong).loglik[0] == pytest.approx(_manual_loglik(clip, 50, n_wrong=1), abs=1e-9)


def test_segments_read_a_genre_switch_and_the_whole_clip_is_none():
    rock = sample_clip(1, frames=60, genre="rock", tempo="fast", instrument="piano", dynamics="loud").codes
    jazz = sample_clip(2, frames=60, genre="jazz", tempo="fast", instrument="piano", dynamics="loud").codes
    mixed = torch.cat([rock[:, :30], jazz[:, 30:]], dim=1)
    seg = score(mixed, segment_seconds=3.0)
    assert seg.genre.tolist() == ["rock", "jazz"]
    assert seg[["start_s", "end_s"]].values.tolist() == [[0.0, 3.0], [3.0, 6.0]]
    assert seg.instrument.tolist() == ["piano", "piano"]
    assert score(mixed).genre[0] == "none"        # half the clip contradicts any single genre


def test_random_codes_fit_no_label_and_score_far_lower():
    df = score(torch.randint(0, CARD, (10, 4, 60), generator=torch.Generator().manual_seed(0)))
    assert (df[list(FACTORS)] == "none").all().all()
    assert df.loglik.max() < -20 and df.error_rate.min() > 0.5


def test_input_shapes():
    codes = stack_codes(make_dataset(3, 24, seed=0))
    assert len(score(codes)) == 3 and len(score(codes[0])) == 1
    assert score(codes, segment_seconds=1.0).groupby("clip").size().tolist() == [2, 2, 2]  # 0.4 s tail dropped
    with pytest.raises(ValueError):
        score(torch.zeros(2, 3, 10, dtype=torch.long))
