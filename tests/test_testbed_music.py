"""The procedural grammar: determinism, label control, genre design (histogram vs order cues)."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from mstools.testbed.music import (
    CARD, FACTORS, GENRE_SPEC, GENRES, NOTE_FRAMES, SCALES, VOCABULARY, make_dataset, sample_clip, stack_codes,
)


def test_same_seed_same_clip_and_different_seed_differs():
    a, b = sample_clip(7, frames=50), sample_clip(7, frames=50)
    assert a.codes.equal(b.codes) and a.labels == b.labels and a.prompt == b.prompt
    assert not sample_clip(8, frames=50).codes.equal(a.codes) or sample_clip(8, frames=50).labels != a.labels
    assert stack_codes(make_dataset(5, 30, seed=3)).equal(stack_codes(make_dataset(5, 30, seed=3)))
    assert not stack_codes(make_dataset(5, 30, seed=3)).equal(stack_codes(make_dataset(5, 30, seed=4)))


def test_fixed_labels_are_honoured_and_codes_in_range():
    clip = sample_clip(0, frames=40, genre="jazz", tempo="slow", instrument="strings", dynamics="loud")
    assert clip.labels == {"genre": "jazz", "tempo": "slow", "instrument": "strings", "dynamics": "loud"}
    assert clip.codes.shape == (4, 40) and clip.codes.dtype.is_floating_point is False
    assert int(clip.codes.min()) >= 0 and int(clip.codes.max()) < CARD
    with pytest.raises(ValueError, match="unknown genre"):
        sample_clip(0, frames=10, genre="polka")
    with pytest.raises(ValueError, match="unknown factor"):
        sample_clip(0, frames=10, mood="happy")


def _onsets(codes):
    """Onset frames read independently from the timbre stream (odd token = held frame)."""
    return np.flatnonzero(codes[1] % 2 == 0)


@pytest.mark.parametrize("genre", GENRES)
def test_rock_like_runs_and_drum_cycles_follow_the_spec(genre):
    """Hand-check the definition: onsets every note length, drums cycle, pitch runs move by one degree."""
    spec = GENRE_SPEC[genre]
    scale = list(SCALES[spec.scale])
    for seed in range(5):
        clip = sample_clip(seed, frames=64, genre=genre, tempo="fast")
        x = clip.codes.numpy()
        on = _onsets(x)
        assert np.all(np.diff(on) == NOTE_FRAMES["fast"])
        assert np.all(x[2][np.setdiff1d(np.arange(64), on)] == 0)          # no drum on held frames
        drums = x[2][on]
        cycle = np.array(spec.drum_cycle)
        phase = [r for r in range(4) if np.array_equal(drums, np.roll(cycle, -r)[np.arange(len(drums)) % 4])]
        assert len(phase) == 1
        degrees = np.array([scale.index(p) for p in x[0][on]])
        pos = (np.arange(len(on)) + phase[0]) % 4
        steps = np.diff(degrees)[pos[1:] != 0]                              # within a phrase
        assert np.all(steps == spec.direction)


def test_prompts_use_known_words_and_name_true_labels():
    for clip in make_dataset(300, 10, seed=5):
        words = clip.prompt.split()
        assert 1 <= len(words) <= 8 and set(words) <= set(VOCABULARY)
        named = [w for w in words if w not in ("with", "music")]
        for w in named:
            factor = next(f for f, values in FACTORS.items() if w in values)
            assert clip.labels[factor] == w


def test_factors_are_independent_of_genre():
    clips = make_dataset(2000, 8, seed=11)
    for factor in ("tempo", "instrument", "dynamics"):
        for genre in GENRES:
            sub = [c.labels[factor] for c in clips if c.labels["genre"] == genre]
            shares = np.array([sub.count(v) for v in FACTORS[factor]]) / len(sub)
            assert np.all(np.abs(shares - 1 / len(FACTORS[factor])) < 0.1)


def _histograms(x, bigram):
    feats = []
    for k in range(x.shape[1]):
        if bigram:
            pairs = x[:, k, :-1] * CARD + x[:, k, 1:]
            feats.append(np.stack([np.bincount(r, minlength=CARD * CARD) for r in pairs]))
        else:
            feats.append(np.stack([np.bincount(r, minlength=CARD) for r in x[:, k]]))
    feats = np.concatenate(feats, 1) / x.shape[-1]
    return feats[:, feats.any(0)]                      # drop never-seen tokens / pairs (speed only)


def test_genre_hidden_from_unigram_histograms_but_read_from_order():
    """Design target: histogram logistic regression <= ~0.6 (chance 0.25), bigram features >= 0.95."""
    clips = make_dataset(600, 60, seed=21)
    x = stack_codes(clips).numpy()
    y = np.array([GENRES.index(c.labels["genre"]) for c in clips])
    uni = cross_val_score(LogisticRegression(max_iter=3000, C=10.0), _histograms(x, False), y, cv=4).mean()
    bi = cross_val_score(LogisticRegression(max_iter=3000, C=10.0), _histograms(x, True), y, cv=4).mean()
    pair = np.array([GENRE_SPEC[GENRES[g]].scale == "major" for g in y])
    pair_acc = cross_val_score(LogisticRegression(max_iter=3000, C=10.0), _histograms(x, False), pair, cv=4).mean()
    print(f"genre from unigram histograms {uni:.3f}, from bigrams {bi:.3f}, scale pair from unigrams {pair_acc:.3f}")
    assert uni <= 0.6
    assert bi >= 0.95
    assert pair_acc >= 0.95          # histograms narrow genre to a pair, no further


@pytest.mark.parametrize("factor", list(FACTORS))
def test_switch_clips_join_two_grammar_clips_at_a_phrase_boundary(factor):
    from mstools.testbed.music import NOTES_PER_PHRASE, sample_switch_clip
    from mstools.testbed.score import score
    for seed in range(12):
        clip = sample_switch_clip(seed, frames=64, factor=factor)
        sw = clip.switch
        assert sw["factor"] == factor and sw["to"] != clip.labels[factor] and 16 <= sw["frame"] <= 56
        assert (sw["frame"] + clip.offset) % (NOTES_PER_PHRASE * NOTE_FRAMES[clip.labels["tempo"]]) == 0
        before, after = score(clip.codes[:, :sw["frame"]]).iloc[0], score(clip.codes[:, sw["frame"]:]).iloc[0]
        assert before.error_rate == 0 and after.error_rate == 0
        assert before[factor] == clip.labels[factor] and after[factor] == sw["to"]
        for other in set(FACTORS) - {factor}:
            assert before[other] == after[other] == clip.labels[other]
    assert sample_switch_clip(3, frames=64, factor="genre").codes.equal(
        sample_switch_clip(3, frames=64, factor="genre").codes)
