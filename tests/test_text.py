"""Sentences from result tables state the table's numbers."""
import math

from mstools.ui.text import pct, span, steering_sentence, verdict

ROW = {"trial": "L1 -> jazz", "success": 0.625, "success_lo": 0.41, "success_hi": 0.8, "base_rate": 0.125,
       "moved": 0.5, "moved_lo": 0.25, "moved_hi": 0.75, "random_mean": 0.15, "random_min": 0.0,
       "random_max": 0.25, "random_draws": 8, "beats_random": True, "prompted": 1.0, "ll_drop": 0.31,
       "ll_drop_random": 0.2, "ll_drop_prompted": -0.05}


def test_sentence_carries_every_number_of_the_row():
    s = steering_sentence(ROW)
    for piece in ("62%", "41-80%", "12%", "+50 points", "+25 to +75", "8 random", "mean 15%", "highest 25%",
                  "text: 100%", "0.31", "random 0.20", "prompted -0.05", "beyond every random draw"):
        assert piece in s, (piece, s)


def test_verdicts_follow_intervals_and_random_draws():
    assert verdict(ROW) == "moved the target beyond every random draw"
    assert verdict({**ROW, "beats_random": False}).startswith("moved clips, but no more than random")
    assert verdict({**ROW, "moved_lo": -0.1}) == "did not move the target"
    assert verdict({**ROW, "moved": 0.0, "moved_lo": math.nan}) == "did not move the target"


def test_formats():
    assert pct(0.5) == "50%" and pct(math.nan) == "n/a" and span(0.0, 1.0) == "0-100%"
