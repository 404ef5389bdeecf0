"""Analysis: probes, directions, projections, readouts, activation patching and sparse features.

- :mod:`.probes`       linear probes for every layer at once, with splits, controls and summaries;
- :mod:`.directions`   directions from probes, class means and PCA; similarity; files;
- :mod:`.projections`  PCA and UMAP views with directions drawn in;
- :mod:`.readout`      what a direction or probe reads, second by second;
- :mod:`.patching`     clean activations into a corrupted run, per hook, time span and head, many
  patches in one batched forward; teacher-forced and generative metrics;
- :mod:`.sae`          sparse autoencoders on per-frame activations streamed from a store, and the
  features that match known factors (needs ``eai-sparsify``).
"""
