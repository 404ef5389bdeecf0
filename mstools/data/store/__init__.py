"""ActivationStore: pooled activations on disk, as safetensors shards plus a JSON manifest.

A store is a directory::

    manifest.json                  merged manifest: configuration, shard list, labels table
    rank000.manifest.json          per-writer (per-rank) partial manifest: its complete shards
    rank000-00000.safetensors      shard: one tensor per hook [rows, ...] + its labels (metadata)
    rank000-00001.safetensors ...

Only safetensors and JSON are written (no pickle). Every file is written atomically (temp file in the
same directory, fsync, ``os.replace``), so an interruption leaves either the old or the new file.

Rows. One row per stored example: a clip (pooled over time), or a (clip, frame) pair when the pooling
is per frame. The labels table has ``clip``, ``frame`` (-1 unless per-frame), ``branch`` (CFG branch,
``"cond"``/``"uncond"``) and the caller's label columns. Frames follow :mod:`mstools.core.timeline`:
frame ``f`` is aligned to input step ``f + K - 1``, the step that completes it.

Writing. ``store.writer(shard_rows=..., rank=r)`` buffers whole clips and writes a shard whenever the
next clip would push the buffer past ``shard_rows`` rows, so memory does not grow with the number of
clips. A shard and then the rank's partial manifest are replaced atomically; only clips in complete
shards count as done (:meth:`ActivationStore.done_clips`), so a run stopped anywhere (an exception, a
kill, a half-written temp file) resumes by skipping those clips and ends with the same store, bit for
bit and in the same order. Several writers (``torchrun`` ranks) each write their own shards and partial
manifest; :meth:`ActivationStore.merge` joins them in a deterministic order (rank, then shard, or the
clip order the caller gives).

Reading is lazy: ``store.labels`` comes from the manifest; ``store.features(hook)`` reads only that
hook's tensors; ``store.iter_batches(hook, rows)`` reads slices for out-of-core use.

Example:

>>> import tempfile, torch
>>> from mstools.data.pooling import Pooling
>>> root = tempfile.mkdtemp()
>>> store = ActivationStore.create(root + "/acts", fingerprint="testbed@abc", pooling=Pooling("mean"),
...                                hooks={"blocks.0.hook_resid_post": [8]}, num_codebooks=4,
...                                frame_rate=50.0)
>>> with store.writer(shard_rows=2) as w:
...     w.add(["a", "b", "c"], {"blocks.0.hook_resid_post": torch.randn(3, 8)},
...           [{"genre": "jazz"}, {"genre": "rock"}, {"genre": "jazz"}])
>>> len(store), store.features("blocks.0.hook_resid_post").shape
(3, torch.Size([3, 8]))
>>> store.labels["genre"].tolist(), sorted(store.done_clips())
(['jazz', 'rock', 'jazz'], ['a', 'b', 'c'])
"""
from mstools.core.errors import StoreError, StoreIntegrityError
from mstools.data.store.format import ALIGNMENT, FORMAT, FORMAT_VERSION
from mstools.data.store.reader import ActivationStore
from mstools.data.store.writer import StoreWriter

__all__ = ["ActivationStore", "StoreWriter", "StoreError", "StoreIntegrityError",
           "FORMAT", "FORMAT_VERSION", "ALIGNMENT"]
