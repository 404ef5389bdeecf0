"""Analyses built on the hooked model and the activation store.

- :mod:`.patching`  activation patching: clean activations into a corrupted run, per hook, time span
  and head, many patches in one batched forward; teacher-forced and generative metrics.
- :mod:`.sae`       sparse autoencoders on per-frame activations streamed from a store; their
  reconstruction, sparsity, features per known factor, and steering with a feature's direction.
"""
