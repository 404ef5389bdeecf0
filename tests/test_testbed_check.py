"""check_v2: the steering experiments name what they say, and the screen runs end to end."""
import pytest
import torch

from mstools.testbed.captions import SIMILAR_GENRE
from mstools.testbed.check_v2 import (GENRE_TARGETS, KINDS, METHODS, _cases, all_directions, screen,
                                      to_markdown)
from mstools.testbed.music import GENRE_SPEC, GENRES


def test_genre_targets_differ_in_what_their_name_says():
    for a in GENRES:
        sa = GENRE_SPEC[a]
        b = GENRE_TARGETS["scale_kit"][a]
        assert GENRE_SPEC[b].direction == sa.direction and GENRE_SPEC[b].scale != sa.scale
        b = GENRE_TARGETS["order"][a]
        assert b == SIMILAR_GENRE[a] and GENRE_SPEC[b].scale == sa.scale and GENRE_SPEC[b].direction != sa.direction
        assert GENRE_SPEC[b].drum_cycle[0] == sa.drum_cycle[0]
        b = GENRE_TARGETS["both"][a]
        assert GENRE_SPEC[b].direction != sa.direction and GENRE_SPEC[b].scale != sa.scale
    for kind in KINDS:
        for src, prompted, target, source in _cases(kind):
            assert source in src.split() and next(iter(target.values())) in prompted.split()
            assert prompted.replace(next(iter(target.values())), source) == src


@pytest.fixture(scope="module")
def untrained():
    from mstools.lessons import untrained_testbed
    return untrained_testbed(seed=0)


def test_screen_runs_with_controls_in_every_call(untrained):
    torch.manual_seed(0)
    vectors = all_directions(untrained, [1], n_clips=64)
    assert {k[2] for k in vectors} == set(METHODS)
    settings = [dict(method="diff_means_src", layer=1, strength=0.5, branch="both", schedule=(0.0, 1.0)),
                dict(method="logistic", layer=1, strength=0.25, branch="cond", schedule="constant")]
    df = screen(untrained, "dynamics", settings, vectors, clips_per_case=1)
    assert len(df) == 2 and {"hit", "ll_drop", "ll_drop_prompted", "quality_ok"} <= set(df.columns)
    assert df.attrs["unsteered_hit"] == 0.0          # random weights: no clip is graded loud


def test_markdown_table_of_results():
    row = dict(setting="diff_means L2 cond 0-1 s a=0.25", success=0.8, success_lo=0.7, success_hi=0.9,
               random_mean=0.01, random_min=0.0, random_max=0.03, random_draws=8, unsteered=0.0, prompted=0.95,
               ll_drop=0.2, ll_drop_random=0.1, ll_drop_prompted=0.11, aim=True)
    md = to_markdown({"confirm_genre_scale_kit": [row]})
    assert "| genre_scale_kit | diff_means L2 cond 0-1 s a=0.25 | 0.80 (0.70-0.90) | 0.010 [0.00, 0.03] (8)" in md
