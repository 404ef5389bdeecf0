"""Evaluation: the one instrument that measures what steering did.

- :func:`steering` runs :class:`Trial` s beside their controls (unsteered twins, >= 8 random
  directions of equal norm, prompted), paired by prompt and seed, scores every clip and segment;
- :func:`summarize` gives one row per trial: success, base rate, moved with an interval, random mean
  and spread, prompted, log-likelihood drops and selectivity per other factor;
- :func:`pick_example` and :func:`replay`: the clip that shows what a trial did, generated again;
- scorers (:func:`readout_scorer`, :func:`nll`), :func:`swap_words` for prompted controls,
  :func:`random_like`, :func:`label_shares`, and intervals (:func:`wilson`, ...).

Notebooks, the main job and the experiments all measure steering with this instrument.

>>> from mstools.steering import Steering
>>> trials = [Trial("to jazz", Steering(jazz, 0.5, schedule=(0, 2), branch="both"), {"genre": "jazz"})]
>>> table = steering(model, trials, prompts=[None] * 4, seeds=[0], duration=3.0)
>>> row = summarize(table).iloc[0]
>>> int(row["random_draws"]), bool(0.0 <= row["base_rate"] <= 1.0)
(8, True)
"""
from mstools.evaluation.examples import pick_example, replay
from mstools.evaluation.run import CONTROLS, steering
from mstools.evaluation.scoring import Scorer, first_difference, nll, readout_scorer
from mstools.evaluation.stats import mean_interval, paired_difference, wilson
from mstools.evaluation.summary import best_trial, label_shares, summarize
from mstools.evaluation.trials import Trial, random_like, random_setting, swap_words

__all__ = ["Trial", "steering", "summarize", "label_shares", "swap_words", "random_like",
           "random_setting", "readout_scorer", "nll", "Scorer", "wilson", "paired_difference",
           "mean_interval", "first_difference", "CONTROLS", "pick_example", "replay", "best_trial"]
