"""Sparse autoencoders on per-frame activations: train from a store, measure, find factor features.

The autoencoder is EleutherAI's ``sparsify.SparseCoder`` (package ``eai-sparsify``): a TopK SAE
``z = TopK(ReLU(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec^T z + b_dec`` with unit-norm decoder
rows and the AuxK loss that revives dead latents (Gao et al. 2024). Its own trainer reads a Hugging
Face language model; here :func:`train_sae` trains the same module on any stream of activation
batches (a tensor, a DataLoader, or :class:`StoreBatches` over an activation store).

Activations are centred and scaled before the SAE (``x_n = (x - mean) / scale``, ``scale`` the RMS
norm per dimension), so one learning rate fits every hook; :class:`SAE` keeps ``mean`` and ``scale``
and works in raw activation units on both sides.

Streaming. :class:`StoreBatches` reads a per-frame store (``pooling="frame"``: one row per frame)
slice by slice with ``store.iter_batches`` into a shuffle buffer of ``buffer_rows`` rows and yields
shuffled batches, so training memory is the buffer, not the store (see ``benchmarks/sae_memory.py``).

Measures (:func:`evaluate_sae`, streaming): fraction of variance explained (FVE), L0 (active latents
per row), dead latents (never active on the evaluation rows). Features and factors:
:func:`feature_auroc` (each latent as a one-vs-rest detector of each factor value, e.g.
``genre=jazz``), :func:`sparse_probe` (accuracy with the k best latents). :func:`splice` gives the hook
that replaces an activation by its reconstruction during generation.

Example:

>>> store = ActivationStore.open("acts/frames")                          # doctest: +SKIP
>>> hook = "blocks.2.hook_resid_post"
>>> sae, log = train_sae(StoreBatches(store, hook), hook=hook, fingerprint=store.fingerprint,
...                      width=768, k=8)                                  # doctest: +SKIP
>>> evaluate_sae(sae, StoreBatches(store, hook, shuffle=False))          # doctest: +SKIP
{'fve': 0.93, 'l0': 8.0, 'dead': 12, 'width': 768, 'rows': 255000}
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from mstools.analysis.directions import Direction
from mstools.analysis.probes import fit_probes, group_split

# sparsify's Triton decoder runs on CUDA tensors only (on CPU tensors it fails at the first forward);
# its eager decoder (torch.nn.functional.embedding_bag) runs everywhere. The switch is read on import.
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
with contextlib.redirect_stdout(io.StringIO()):  # it prints which decoder it chose
    from sparsify import SparseCoder, SparseCoderConfig

__all__ = ["SAE", "StoreBatches", "train_sae", "evaluate_sae", "encode", "feature_auroc",
           "best_features", "pool_by_clip", "sparse_probe", "features_needed", "splice", "top_rows"]

Batches = torch.Tensor | Iterable[torch.Tensor]


@dataclasses.dataclass(eq=False)
class SAE:
    """A trained sparse autoencoder at one hook, in raw activation units.

    Attributes:
        coder: the ``sparsify.SparseCoder`` (reads normalised inputs).
        hook: hook name whose activations it encodes (``[..., D]``).
        fingerprint: the model's fingerprint (for steering vectors made from it).
        mean: ``[D]`` mean activation removed before encoding.
        scale: RMS norm per dimension of the centred activations (inputs are divided by it).
        meta: training settings and statistics.
    """

    coder: SparseCoder
    hook: str
    fingerprint: str
    mean: torch.Tensor
    scale: float
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def width(self) -> int:
        """Number of latents M."""
        return int(self.coder.num_latents)

    @property
    def k(self) -> int:
        """Active latents per row (TopK)."""
        return int(self.coder.cfg.k)

    @property
    def d_in(self) -> int:
        return int(self.coder.d_in)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"activations have width {x.shape[-1]}; this SAE reads {self.d_in} ({self.hook})")
        return (x.float() - self.mean.to(x.device)) / self.scale

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations ``[..., D]`` -> dense latent codes ``[..., M]`` (k non-zeros per row)."""
        flat = self._norm(x).reshape(-1, self.d_in)
        out = self.coder.encode(flat)
        codes = torch.zeros(flat.shape[0], self.width, device=flat.device)
        codes.scatter_(1, out.top_indices, out.top_acts.float())
        return codes.reshape(*x.shape[:-1], self.width)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Dense codes ``[..., M]`` -> reconstruction ``[..., D]`` in raw units."""
        xn = codes.float() @ self.coder.W_dec + self.coder.b_dec
        return xn * self.scale + self.mean.to(codes.device)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., D]`` -> ``SAE(x) [..., D]`` (same dtype as ``x``)."""
        flat = self._norm(x).reshape(-1, self.d_in)
        xn = self.coder(flat).sae_out
        return (xn * self.scale + self.mean.to(x.device)).reshape(x.shape).to(x.dtype)

    def direction(self, feature: int) -> torch.Tensor:
        """Decoder direction of latent ``feature`` in raw activation space, ``[D]`` (unit norm)."""
        if not 0 <= int(feature) < self.width:
            raise IndexError(f"feature {feature} out of range: this SAE has {self.width} latents")
        v = self.coder.W_dec[int(feature)].detach().float() * self.scale
        return v / v.norm()

    def feature_direction(self, feature: int, label: str | None = None) -> Direction:
        """The decoder direction of ``feature`` as a :class:`~mstools.analysis.directions.Direction`
        (``SteeringVector.from_directions(d, model.fingerprint)`` steers with it)."""
        v = self.direction(feature)
        return Direction(v, self.hook, label or f"feature {int(feature)}", "sae", 1.0,
                         {"feature": int(feature), "width": self.width, "k": self.k})

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``sae.safetensors`` + ``cfg.json`` (sparsify's format) and ``mstools.json``."""
        path = Path(path)
        self.coder.save_to_disk(path)
        info = {"hook": self.hook, "fingerprint": self.fingerprint, "mean": self.mean.tolist(),
                "scale": self.scale, "meta": self.meta}
        (path / "mstools.json").write_text(json.dumps(info))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SAE":
        """Read what :meth:`save` wrote."""
        path = Path(path)
        info = json.loads((path / "mstools.json").read_text())
        coder = SparseCoder.load_from_disk(path)
        return cls(coder, info["hook"], info["fingerprint"], torch.tensor(info["mean"]),
                   float(info["scale"]), info["meta"])

    def __repr__(self) -> str:
        return f"SAE({self.hook!r}, d_in={self.d_in}, width={self.width}, k={self.k})"


class StoreBatches:
    """Shuffled batches of one hook's rows from a store, read slice by slice (re-iterable).

    Args:
        store: an :class:`~mstools.data.store.ActivationStore` (per-frame pooling for frame SAEs).
        hook: the stored hook to read.
        batch_size: rows per yielded batch.
        buffer_rows: rows held for shuffling (memory: ``buffer_rows x D`` floats).
        read_rows: rows per ``store.iter_batches`` read.
        shuffle: False yields the rows in store order (for evaluation).
        seed: shuffling seed; each pass over the store reshuffles with the next seed.
        limit: read at most this many rows of the store (None: all).

    >>> for x in StoreBatches(store, "blocks.2.hook_resid_post", batch_size=1024):   # doctest: +SKIP
    ...     x.shape                                                                 # [<=1024, 96]
    """

    def __init__(self, store: Any, hook: str, batch_size: int = 1024, *, buffer_rows: int = 65536,
                 read_rows: int = 8192, shuffle: bool = True, seed: int = 0, limit: int | None = None):
        if hook not in store.hooks:
            raise KeyError(f"hook {hook!r} is not in this store; stored hooks: {store.hooks}")
        if batch_size < 1 or buffer_rows < batch_size:
            raise ValueError(f"need 1 <= batch_size <= buffer_rows, got {batch_size}, {buffer_rows}")
        self.store, self.hook, self.batch_size = store, hook, int(batch_size)
        self.buffer_rows, self.read_rows, self.shuffle = int(buffer_rows), int(read_rows), shuffle
        self.seed, self.limit, self._passes = int(seed), limit, 0

    def __len__(self) -> int:
        n = len(self.store) if self.limit is None else min(self.limit, len(self.store))
        return math.ceil(n / self.batch_size)

    def _slices(self) -> Iterator[torch.Tensor]:
        left = len(self.store) if self.limit is None else int(self.limit)
        for x in self.store.iter_batches(self.hook, rows=self.read_rows):
            if left <= 0:
                return
            yield x[:left]
            left -= len(x)

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + self._passes)
        self._passes += 1
        buf: list[torch.Tensor] = []
        held = 0
        for x in self._slices():
            buf.append(x)
            held += len(x)
            if held >= self.buffer_rows:
                yield from self._emit(torch.cat(buf), g)
                buf, held = [], 0
        if buf:
            yield from self._emit(torch.cat(buf), g)

    def _emit(self, rows: torch.Tensor, g: torch.Generator) -> Iterator[torch.Tensor]:
        if self.shuffle:
            rows = rows[torch.randperm(len(rows), generator=g)]
        for i in range(0, len(rows), self.batch_size):
            yield rows[i:i + self.batch_size]


def _passes(data: Batches, batch_size: int, seed: int) -> Callable[[int], Iterable[torch.Tensor]]:
    """A function epoch -> iterable of ``[n, D]`` batches (tensors are shuffled per epoch)."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise ValueError(f"activations must be [N, D], got {tuple(data.shape)}")

        def tensor_pass(epoch: int) -> Iterator[torch.Tensor]:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
            for i in range(0, len(data), batch_size):
                yield data[order[i:i + batch_size]]
        return tensor_pass
    if iter(data) is data:
        raise TypeError("pass a tensor or a re-iterable (DataLoader, StoreBatches), not a one-shot "
                        "iterator: training reads the data once for statistics, then once per epoch")
    return lambda epoch: data


def _batch(b: Any) -> torch.Tensor:
    x = b[0] if isinstance(b, (tuple, list)) else b
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"each batch must be a Tensor [n, D], got {getattr(x, 'shape', type(x))}")
    return x.float()


def _statistics(data: Iterable[torch.Tensor], max_rows: int) -> tuple[torch.Tensor, float, int]:
    """Mean ``[D]`` and RMS norm per dimension of the centred rows (first ``max_rows`` rows)."""
    n, s1, s2 = 0, None, 0.0
    for b in data:
        x = _batch(b).double()
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 += float((x * x).sum())
        n += len(x)
        if n >= max_rows:
            break
    if n == 0:
        raise ValueError("no activations to train on (the data yielded no rows)")
    mean = s1 / n
    var = s2 / n - float((mean * mean).sum())
    return mean.float(), math.sqrt(max(var, 1e-12) / len(mean)), n


def train_sae(data: Batches, *, hook: str, fingerprint: str, width: int, k: int, epochs: int = 1,
              batch_size: int = 1024, lr: float | None = None, auxk_alpha: float = 1 / 32,
              dead_rows: int = 100_000, stats_rows: int = 200_000, seed: int = 0,
              log_every: int = 50, progress: bool = False) -> tuple[SAE, pd.DataFrame]:
    """Train a TopK sparse autoencoder on activation batches.

    Args:
        data: ``Tensor [N, D]`` (shuffled each epoch), a DataLoader of ``[n, D]`` tensors, or
            :class:`StoreBatches` (streams a store).
        hook, fingerprint: what the activations are (kept in the :class:`SAE`).
        width: number of latents M (> 0); k: active latents per row (1 <= k <= M).
        epochs: passes over the data.
        lr: Adam learning rate (default sparsify's rule ``2e-4 / sqrt(M / 2**14)``).
        auxk_alpha: weight of the AuxK loss (dead latents predict the residual).
        dead_rows: a latent not active for this many rows counts as dead (AuxK then uses it).
        stats_rows: rows read first for the mean and scale.

    Returns:
        ``(sae, log)``; ``log`` has ``step, rows, fvu, auxk, dead`` every ``log_every`` steps.

    >>> sae, log = train_sae(torch.randn(4096, 16), hook="blocks.0.hook_resid_post",
    ...                      fingerprint="m", width=64, k=4)
    >>> sae.encode(torch.randn(3, 16)).shape
    torch.Size([3, 64])
    """
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"SAE width must be a positive number of latents, got {width!r}")
    if not isinstance(k, int) or not 1 <= k <= width:
        raise ValueError(f"k must be an integer in [1, width={width}], got {k!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    make_pass = _passes(data, batch_size, seed)
    mean, scale, n_stats = _statistics(make_pass(-1), stats_rows)
    torch.manual_seed(seed)
    coder = SparseCoder(len(mean), SparseCoderConfig(num_latents=width, k=k))
    lr = 2e-4 / math.sqrt(width / 2 ** 14) if lr is None else lr
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    since = torch.zeros(width, dtype=torch.long)
    log, step, rows = [], 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm  # lazy: only for progress bars
        bar = tqdm(total=epochs * len(data) if hasattr(data, "__len__") and not
                   isinstance(data, torch.Tensor) else None, desc="train SAE", unit="batch")
    try:
        for epoch in range(epochs):
            for b in make_pass(epoch):
                x = (_batch(b) - mean) / scale
                out = coder(x, dead_mask=since > dead_rows)
                loss = out.fvu + auxk_alpha * out.auxk_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                coder.remove_gradient_parallel_to_decoder_directions()
                opt.step()
                coder.set_decoder_norm_to_unit_norm()
                fired = torch.zeros(width, dtype=torch.bool)
                fired[out.latent_indices.flatten()] = True
                since += len(x)
                since[fired] = 0
                rows += len(x)
                if step % log_every == 0:
                    log.append(dict(step=step, rows=rows, fvu=out.fvu.item(),
                                    auxk=out.auxk_loss.item(), dead=int((since > dead_rows).sum())))
                step += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    coder.eval()
    meta = dict(width=width, k=k, epochs=epochs, batch_size=batch_size, lr=lr, auxk_alpha=auxk_alpha,
                seed=seed, rows_seen=rows, stats_rows=n_stats, library="eai-sparsify")
    return SAE(coder, hook, fingerprint, mean, scale, meta), pd.DataFrame(log)


@torch.no_grad()
def evaluate_sae(sae: SAE, data: Batches, batch_size: int = 4096) -> dict[str, float]:
    """Streamed reconstruction and sparsity on ``data``: ``fve`` (1 - SSE / total variance around
    the data's own mean), ``l0`` (mean active latents per row), ``dead`` (latents never active),
    ``dead_frac``, ``rows``, ``width``."""
    batches = [data] if isinstance(data, torch.Tensor) else data
    n, sse, s1, s2, l0 = 0, 0.0, None, 0.0, 0.0
    fired = torch.zeros(sae.width, dtype=torch.bool)
    for b in batches:
        x_all = _batch(b)
        for i in range(0, len(x_all), batch_size):
            x = x_all[i:i + batch_size]
            codes = sae.encode(x)
            xh = sae.decode(codes)
            sse += float(((x - xh).double() ** 2).sum())
            xd = x.double()
            s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
            s2 += float((xd * xd).sum())
            nz = codes != 0
            l0 += float(nz.sum())
            fired |= nz.any(0)
            n += len(x)
    if n == 0:
        raise ValueError("no rows to evaluate")
    total = s2 - float((s1 * s1).sum()) / n
    dead = int((~fired).sum())
    return dict(fve=1 - sse / total, l0=l0 / n, dead=dead, dead_frac=dead / sae.width, rows=n,
                width=sae.width)


@torch.no_grad()
def encode(sae: SAE, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Dense codes ``[N, M]`` of ``x [N, D]``, in batches."""
    return torch.cat([sae.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def pool_by_clip(codes: torch.Tensor, labels: pd.DataFrame) -> tuple[torch.Tensor, pd.DataFrame]:
    """Mean codes over each clip's frames: ``[N, M]`` -> ``[C, M]`` with one labels row per clip
    (the clip's first row), in order of first appearance. Factor labels are per clip, so a latent
    that marks a factor value on some frames of every clip separates clips even when it is zero on
    most frames."""
    clips = labels["clip"].to_numpy()
    uniq, first, inv = np.unique(clips, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    idx = torch.as_tensor(remap[inv])
    sums = torch.zeros(len(uniq), codes.shape[1]).index_add_(0, idx, codes.float())
    counts = torch.bincount(idx, minlength=len(uniq)).clamp_min(1).float()
    return sums / counts[:, None], labels.iloc[first[order]].reset_index(drop=True)


def _ranks(codes: torch.Tensor) -> np.ndarray:
    from scipy.stats import rankdata  # lazy: scipy is heavy and only the AUROC needs it
    return rankdata(codes.numpy(), axis=0, method="average")


def feature_auroc(codes: torch.Tensor, labels: pd.DataFrame, factors: Sequence[str],
                  rows: np.ndarray | None = None) -> pd.DataFrame:
    """AUROC of every latent as a detector of every factor value (that value vs the rest).

    Args:
        codes: ``[N, M]`` latent codes (rows in the order of ``labels``).
        labels: DataFrame with the ``factors`` columns.
        rows: restrict to these rows (e.g. a training split).

    Returns:
        Long table ``factor, value, feature, auroc`` (ties get average ranks; 0.5 = no signal,
        1 = the latent is larger on every row of that value than on any other row).
    """
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    r = _ranks(codes[torch.as_tensor(rows)])
    out = []
    for f in factors:
        y = labels[f].to_numpy()[rows]
        for v in pd.unique(y):
            pos = y == v
            npos, nneg = int(pos.sum()), int((~pos).sum())
            if npos == 0 or nneg == 0:
                continue
            auc = (r[pos].sum(0) - npos * (npos + 1) / 2) / (npos * nneg)
            out.append(pd.DataFrame(dict(factor=f, value=v, feature=np.arange(codes.shape[1]),
                                         auroc=auc)))
    return pd.concat(out, ignore_index=True)


def best_features(auroc: pd.DataFrame) -> pd.DataFrame:
    """The latent with the highest AUROC per ``(factor, value)``: ``factor, value, feature, auroc``."""
    idx = auroc.groupby(["factor", "value"], sort=False)["auroc"].idxmax()
    return auroc.loc[idx].reset_index(drop=True)


def sparse_probe(codes: torch.Tensor, labels: pd.DataFrame, factor: str, value: str, *,
                 ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), seed: int = 0,
                 test_size: float = 0.25, C: float = 1.0) -> pd.DataFrame:
    """Held-out accuracy of a logistic probe on the ``k`` latents that best separate ``value``.

    Rows are split by clip (:func:`mstools.analysis.probes.group_split`, stratified); latents are ranked by
    ``|AUROC - 0.5|`` on the training rows only; for each k a logistic regression reads the top k (z-scored with training statistics).

    Returns:
        ``factor, value, k, accuracy, balanced_accuracy, features`` (balanced accuracy = mean of
        the recalls of "value" and "rest": 0.5 is chance whatever the class balance).
    """
    y = (labels[factor].to_numpy() == value)
    tr, te = group_split(labels["clip"].to_numpy(), y, test_size, seed)
    auc = feature_auroc(codes, labels.assign(_y=y), ["_y"], rows=tr)
    auc = auc[auc["value"] == True]  # noqa: E712  (numpy bool)
    order = auc.assign(sep=(auc["auroc"] - 0.5).abs()).sort_values("sep", ascending=False)["feature"]
    train = pd.DataFrame({"clip": labels["clip"].to_numpy()[tr], "y": y[tr].astype(str)})
    out = []
    for k in ks:
        top = torch.as_tensor(order.to_numpy()[:k].astype(np.int64))
        probe = fit_probes({"x": codes[tr][:, top]}, train, "y", "logistic",
                           options={"logistic": {"C": C}})["x"]
        pred = probe.predict(codes[te][:, top].float()) == "True"
        truth = y[te]
        recall = [float((pred[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
        out.append(dict(factor=factor, value=value, k=int(k), accuracy=float((pred == truth).mean()),
                        balanced_accuracy=float(np.mean(recall)), features=top.tolist()))
    return pd.DataFrame(out)


def features_needed(curve: pd.DataFrame, level: float = 0.95,
                    metric: str = "balanced_accuracy") -> float:
    """Smallest k in a :func:`sparse_probe` curve whose ``metric`` reaches ``level`` (inf if none)."""
    hit = curve[curve[metric] >= level]
    return float(hit["k"].min()) if len(hit) else math.inf


def splice(sae: SAE) -> list[tuple[str, Callable]]:
    """Hooks that replace the activation at ``sae.hook`` by ``SAE(activation)`` on every row and step.

    >>> with model.hooks(splice(sae)):                                         # doctest: +SKIP
    ...     out = model.generate(["jazz"], 6.0, seed=0)
    """
    def reconstruct(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return sae.reconstruct(x)
    return [(sae.hook, reconstruct)]


def top_rows(codes: torch.Tensor, labels: pd.DataFrame, feature: int, n: int = 5,
             per_clip: bool = True) -> pd.DataFrame:
    """Rows where ``feature`` is largest (``labels`` rows with an ``activation`` column); with
    ``per_clip`` only the best frame of each clip (so the n rows are n different clips)."""
    a = codes[:, int(feature)].numpy()
    df = labels.assign(activation=a).sort_values("activation", ascending=False)
    if per_clip:
        df = df.drop_duplicates("clip")
    return df.head(n)
