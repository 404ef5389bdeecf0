"""Linear probes for every hook at once: ridge, logistic, the seed paper's recipe; splits, metrics, controls.

All layers are fitted **together** in torch: features are stacked to ``X [L, N, D]`` (one row of the
layer axis per hook) and every solver works on the whole stack (batched Gram matrices and Cholesky
solves, batched L-BFGS, batched Adam), never a Python loop of scikit-learn fits.

Inputs (activations come from elsewhere in the package, e.g. a store of pooled activations):

- ``features``: ``{hook name: Tensor [N, D]}`` (float32 or float16; trailing dims are flattened), or a
  stacked ``Tensor [L, N, D]`` with ``hooks=[L names]``; several feature sets (e.g. a trained and an
  untrained model) as ``{"trained": {...}, "untrained": {...}}``. Anything with ``.hooks`` and
  ``.features(hook)`` (an activation store) is accepted in place of a ``{hook: Tensor}`` mapping.
- ``labels``: a ``pandas.DataFrame`` with N rows, a ``clip`` column (group id: rows of one clip are
  never split between train and test) and one column per target (strings or ints: classes; floats:
  continuous targets such as ``bpm``).

Example (two hooks, a genre that the second layer reads):

>>> import torch, pandas as pd
>>> g = torch.Generator().manual_seed(0)
>>> y = torch.arange(80) % 2
>>> feats = {"blocks.0.hook_resid_post": torch.randn(80, 16, generator=g),
...          "blocks.1.hook_resid_post": torch.randn(80, 16, generator=g) + 4 * y[:, None]}
>>> labels = pd.DataFrame({"clip": range(80), "genre": ["rock", "jazz"] * 40})
>>> df = probe_sweep(feats, labels, targets=["genre"], methods=("ridge",), seeds=(0, 1))
>>> s = summarize(df).query("control == 'none'")
>>> s["accuracy_mean"].tolist()[1], list(df.columns[:7])
(1.0, ['model', 'hook', 'layer', 'target', 'method', 'control', 'seed'])
"""
from __future__ import annotations
from mstools.analysis.probes.features import stack_features
from mstools.analysis.probes.fits import LinearFit, Probe
from mstools.analysis.probes.metrics import accuracy, f1_macro, r2
from mstools.analysis.probes.solvers import centered_gram, fit_logistic, fit_ridge, fit_seed_recipe
from mstools.analysis.probes.splits import group_folds, group_split, shuffle_by_clip
from mstools.analysis.probes.sweep import (CONTROLS, METHODS, best_hook, fit_probes,
                                           held_out_predictions, probe_sweep, summarize)
from mstools.core.names import layer_of

__all__ = ["LinearFit", "Probe", "layer_of", "stack_features", "centered_gram", "fit_ridge",
           "fit_logistic", "fit_seed_recipe", "accuracy", "f1_macro", "r2", "group_split",
           "group_folds", "shuffle_by_clip", "fit_probes", "probe_sweep", "summarize",
           "held_out_predictions", "best_hook", "METHODS", "CONTROLS"]
