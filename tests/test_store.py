"""ActivationStore: round trip, resume, integrity, several writers, flat memory.

References are independent of the store: the tensors the test generated itself (compared bit for
bit), hashlib on the files, and a store written in one uninterrupted run by a single writer.
"""
import json
import multiprocessing as mp
import os
import re

import pandas as pd
import pytest
import torch
import xxhash
from safetensors import safe_open

from mstools.data.store import writer as store_module
from mstools.data.pooling import Pooling
from mstools.data.store import ActivationStore, StoreError, StoreIntegrityError

RESID, HOOK_Z = "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"
SHAPES = {RESID: [8], HOOK_Z: [2, 4]}
GENRES = ["jazz", "rock", "folk"]
_INT_OF = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float tensor (so that -0.0, NaN payloads etc. must match too)."""
    return t.contiguous().view(_INT_OF[t.dtype])


def clip_acts(i: int, frames: int | None = None) -> dict[str, torch.Tensor]:
    """Deterministic pooled activations of clip i: {hook: [*frames?, *shape]}."""
    g = torch.Generator().manual_seed(1000 + i)
    lead = () if frames is None else (frames,)
    return {h: torch.randn(*lead, *s, generator=g) for h, s in SHAPES.items()}


def clip_labels(i: int) -> dict:
    return {"genre": GENRES[i % 3], "tempo": 90.0 + i, "index": i}


def make_store(path, dtype=torch.float32, pooling="mean", **kw) -> ActivationStore:
    return ActivationStore.create(path, fingerprint="testbed@0123", hooks=kw.pop("hooks", SHAPES),
                                  pooling=pooling, dtype=dtype, num_codebooks=4, frame_rate=10.0,
                                  meta={"text": "unit test"}, **kw)


def write(writer, clips, batch=4, frames=None):
    """Add clips in batches, as a caching loop would."""
    for start in range(0, len(clips), batch):
        ids = clips[start:start + batch]
        acts = {h: torch.stack([clip_acts(i, frames)[h] for i in ids]) for h in SHAPES}
        writer.add([f"clip{i:03d}" for i in ids], acts, [clip_labels(i) for i in ids])


def content(store: ActivationStore):
    """What a reader sees: labels table and every hook's tensors in the stored dtype."""
    return store.labels, {h: store.features(h, dtype=None) for h in store.hooks}


def assert_same_content(a: ActivationStore, b: ActivationStore) -> None:
    la, fa = content(a)
    lb, fb = content(b)
    pd.testing.assert_frame_equal(la, lb)
    for h in fa:
        assert torch.equal(bits(fa[h]), bits(fb[h])), h


def reference(tmp_path, clips, shard_rows=4, **kw) -> ActivationStore:
    store = make_store(tmp_path / "reference", **kw)
    with store.writer(shard_rows=shard_rows) as w:
        write(w, clips)
    return store


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    clips = list(range(10))
    store = make_store(tmp_path / "s", dtype=dtype)
    with store.writer(shard_rows=3) as w:
        write(w, clips)

    again = ActivationStore.open(tmp_path / "s")
    assert len(again) == 10 and again.hooks == [RESID, HOOK_Z]
    assert again.hook_shapes == {RESID: (8,), HOOK_Z: (2, 4)}
    assert (again.fingerprint, again.dtype, again.num_codebooks, again.frame_rate) == (
        "testbed@0123", dtype, 4, 10.0)
    assert again.pooling == Pooling("mean") and again.meta == {"text": "unit test"}
    for h in SHAPES:
        want = torch.stack([clip_acts(i)[h] for i in clips]).to(dtype)
        got = again.features(h, dtype=None)
        assert got.dtype == dtype and torch.equal(bits(got), bits(want))
        assert torch.equal(again.features(h), want.float())      # default read dtype: float32
        batches = list(again.iter_batches(h, rows=4, dtype=None))
        assert [len(b) for b in batches] == [4, 4, 2]
        assert torch.equal(bits(torch.cat(batches)), bits(want))
    want_labels = pd.DataFrame([{"clip": f"clip{i:03d}", "frame": -1, "branch": "cond",
                                 **clip_labels(i)} for i in clips])
    pd.testing.assert_frame_equal(again.labels, want_labels)
    assert again.done_clips() == {f"clip{i:03d}" for i in clips}

    # manifest: every shard's checksum and size are those of the file on disk, and each tensor's
    # checksum that of its bytes (xxh3-64, computed here with xxhash itself); only JSON +
    # safetensors; no lock file is left behind
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [3, 3, 3, 1]
    for s in manifest["shards"]:
        data = (tmp_path / "s" / s["file"]).read_bytes()
        assert s["xxh3"] == xxhash.xxh3_64_hexdigest(data) and s["bytes"] == len(data)
        with safe_open(str(tmp_path / "s" / s["file"]), framework="pt") as f:
            for h in SHAPES:
                raw = f.get_tensor(h).contiguous().view(torch.uint8).numpy().tobytes()
                assert s["checksums"][h] == xxhash.xxh3_64_hexdigest(raw)
    assert manifest["alignment"]["convention"] == "mstools.core.timeline"
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert {p.rsplit(".", 1)[-1] for p in names} <= {"json", "safetensors"}
    assert again.verify() == {"shards": 4, "rows": 10, "removed": []}


def test_per_frame_rows_and_per_frame_labels(tmp_path):
    frames = 5
    store = make_store(tmp_path / "s", pooling=Pooling("frame"))
    with store.writer(shard_rows=7) as w:
        ids = [0, 1, 2]
        acts = {h: torch.stack([clip_acts(i, frames)[h] for i in ids]) for h in SHAPES}
        w.add(ids, acts, [{"genre": "jazz", "segment": [0, 0, 1, 1, 1]} for _ in ids])
    lab = store.labels
    assert len(store) == 15 and lab["frame"].tolist() == list(range(frames)) * 3
    assert lab["clip"].tolist() == [c for c in ids for _ in range(frames)]
    assert lab["segment"].tolist() == [0, 0, 1, 1, 1] * 3
    feats = store.features(HOOK_Z)
    for row, (clip, frame) in enumerate(zip(lab["clip"], lab["frame"])):
        assert torch.equal(feats[row], clip_acts(clip, frames)[HOOK_Z][frame])
    # clips are never split: shard_rows=7 with 5 rows per clip gives shards of 5 rows
    assert [s["rows"] for s in store.shards] == [5, 5, 5]


def test_both_branches_of_a_clip_stay_in_one_shard(tmp_path):
    store = make_store(tmp_path / "s", branches=("cond", "uncond"))
    with store.writer(shard_rows=3) as w:               # clip 1 crosses 3 rows: not split
        for i in range(3):
            for branch in ("cond", "uncond"):
                acts = {h: v.unsqueeze(0) for h, v in clip_acts(10 * i + (branch == "uncond")).items()}
                w.add([i], acts, [{"genre": GENRES[i]}], branch=branch)
        with pytest.raises(ValueError, match="pass branch"):
            w.add([9], {h: v.unsqueeze(0) for h, v in clip_acts(9).items()})
    assert [(s["clips"], s["rows"]) for s in store.shards] == [([0, 1], 4), ([2], 2)]
    assert store.labels["branch"].tolist() == ["cond", "uncond"] * 3
    assert torch.equal(store.features(RESID)[1], clip_acts(1)[RESID])


# ----------------------------------------------------------------------------- resume

class Interrupt(KeyboardInterrupt):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    clips = list(range(23))
    ref = reference(tmp_path, clips)

    path = tmp_path / "resumed"
    store = make_store(path)
    with pytest.raises(Interrupt):
        with store.writer(shard_rows=4) as w:
            for i in clips:
                if i == 14:
                    raise Interrupt()                    # Ctrl-C between shards
                write(w, [i])
    done = store.done_clips()
    assert done == {f"clip{i:03d}" for i in range(12)}  # 3 complete shards; clips 12-13 were buffered
    # what a kill during a later shard write leaves behind: a half-written temp file and an
    # orphan shard that no manifest lists
    (path / ".rank000-00003.safetensors.k1ll3d.tmp").write_bytes(b"\x00" * 100)
    (path / "rank000-00003.safetensors").write_bytes(b"half a shard")

    with pytest.warns(UserWarning, match="not merged"):  # the interrupted writer did not merge
        store = ActivationStore.create(path, fingerprint="testbed@0123", hooks=SHAPES,
                                       pooling="mean", num_codebooks=4, frame_rate=10.0,
                                       meta={"text": "unit test"}, exist_ok=True)
    with store.writer(shard_rows=4) as w:
        write(w, [i for i in clips if f"clip{i:03d}" not in store.done_clips()], batch=5)
    assert_same_content(store, ref)
    assert [s["xxh3"] for s in store.shards] == [s["xxh3"] for s in ref.shards]
    assert not list(path.glob(".*.tmp"))
    store.verify()


def test_resume_after_a_kill_between_shard_and_manifest(tmp_path, monkeypatch):
    clips = list(range(10))
    ref = reference(tmp_path, clips)
    store = make_store(tmp_path / "s")
    real = store_module.atomic_write_json
    calls = {"partial": 0}

    def dies_on_second_partial_manifest(path, obj):
        if path.name == "rank000.manifest.json":
            calls["partial"] += 1
            if calls["partial"] == 2:                    # shard 1 is on disk, not yet recorded
                raise Interrupt()
        real(path, obj)

    monkeypatch.setattr(store_module, "atomic_write_json", dies_on_second_partial_manifest)
    with pytest.raises(Interrupt):
        with store.writer(shard_rows=4) as w:
            write(w, clips)
    monkeypatch.setattr(store_module, "atomic_write_json", real)
    assert (tmp_path / "s" / "rank000-00001.safetensors").exists()
    assert store.done_clips() == {f"clip{i:03d}" for i in range(4)}
    with store.writer(shard_rows=4) as w:
        write(w, [i for i in clips if f"clip{i:03d}" not in store.done_clips()])
    assert_same_content(ActivationStore.open(tmp_path / "s"), ref)


# ----------------------------------------------------------------------------- integrity

def test_corrupt_truncated_and_missing_shards_are_named(tmp_path):
    clips = list(range(16))
    ref = reference(tmp_path, clips)
    store = make_store(tmp_path / "s")
    with store.writer(shard_rows=4) as w:
        write(w, clips)
    d = tmp_path / "s"
    corrupt = bytearray((d / "rank000-00001.safetensors").read_bytes())
    corrupt[-5] ^= 0xFF                                  # one flipped byte in the tensor data
    (d / "rank000-00001.safetensors").write_bytes(bytes(corrupt))
    with open(d / "rank000-00002.safetensors", "r+b") as f:
        f.truncate(200)
    os.unlink(d / "rank000-00003.safetensors")

    with pytest.raises(StoreIntegrityError) as err:
        store.verify()
    assert err.value.problems.keys() == {"rank000-00001.safetensors", "rank000-00002.safetensors",
                                         "rank000-00003.safetensors"}
    msg = str(err.value)
    assert "rank000-00001.safetensors: corrupt" in msg and "rank000-00002.safetensors: truncated" in msg
    assert "rank000-00003.safetensors: missing" in msg and "resume the writer" in msg
    # reading checks what it serves: the flipped byte (same size) is caught, not served
    with pytest.raises(StoreIntegrityError, match="rank000-00001.safetensors .* is corrupt"):
        store.features(RESID)
    with pytest.raises(StoreIntegrityError, match="rank000-00001.safetensors .* is corrupt"):
        list(store.iter_batches(RESID, rows=3))

    report = store.verify(repair=True)
    assert report["removed"] == ["rank000-00001.safetensors", "rank000-00002.safetensors",
                                 "rank000-00003.safetensors"]
    assert store.done_clips() == {f"clip{i:03d}" for i in range(4)}
    with store.writer(shard_rows=4) as w:
        write(w, [i for i in clips if f"clip{i:03d}" not in store.done_clips()])
    store.verify()
    assert_same_content(store, ref)


def test_deleting_a_bad_shard_by_hand_and_resuming_recomputes_it(tmp_path):
    clips = list(range(12))
    ref = reference(tmp_path, clips)
    store = make_store(tmp_path / "s")
    with store.writer(shard_rows=4) as w:
        write(w, clips)
    os.unlink(tmp_path / "s" / "rank000-00001.safetensors")           # what the error suggests
    with open(tmp_path / "s" / "rank000-00002.safetensors", "r+b") as f:
        f.truncate(100)                                               # and one cut short
    assert store.done_clips() == {f"clip{i:03d}" for i in range(4)}
    with pytest.warns(UserWarning, match="rank000-00001.safetensors, rank000-00002.safetensors are missing"):
        w = store.writer(shard_rows=4)
    with w:
        write(w, [i for i in clips if f"clip{i:03d}" not in store.done_clips()])
    store.verify()
    assert_same_content(store, ref)                   # the lost shards were the last ones, so the
    assert [s["xxh3"] for s in store.shards] == [s["xxh3"] for s in ref.shards]  # same files


def test_truncated_manifest_is_refused_and_rebuilt_by_merge(tmp_path):
    store = make_store(tmp_path / "s")
    with store.writer(shard_rows=4) as w:
        write(w, list(range(9)))
    text = (tmp_path / "s" / "manifest.json").read_text()
    (tmp_path / "s" / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(StoreError, match=r"manifest\.json is not valid JSON.*ActivationStore\.merge"):
        ActivationStore.open(tmp_path / "s")
    rebuilt = ActivationStore.merge(tmp_path / "s")
    assert_same_content(rebuilt, reference(tmp_path, list(range(9))))
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "nowhere")


def test_lost_partial_manifests_are_rebuilt_from_the_merged_one(tmp_path):
    clips = list(range(11))
    ref = reference(tmp_path, clips)
    store = make_store(tmp_path / "s")
    with store.writer(shard_rows=4) as w:
        write(w, clips[:6])
    os.unlink(tmp_path / "s" / "rank000.manifest.json")
    assert ActivationStore.merge(tmp_path / "s").done_clips() == {f"clip{i:03d}" for i in range(6)}
    with store.writer(shard_rows=4) as w:             # continues after shard 1, overwrites nothing
        write(w, clips[6:])
    assert_same_content(store, ref)


# ----------------------------------------------------------------------------- several writers

def _rank_worker(path: str, rank: int, world_size: int, clips: list) -> None:
    torch.set_num_threads(1)
    store = ActivationStore.create(path, fingerprint="testbed@0123", hooks=SHAPES, pooling="mean",
                                   num_codebooks=4, frame_rate=10.0, meta={"text": "unit test"},
                                   exist_ok=True)
    with store.writer(shard_rows=3, rank=rank, world_size=world_size) as w:
        write(w, clips[rank::world_size], batch=2)


def test_two_process_writers_merge_into_the_single_writer_store(tmp_path):
    clips = list(range(13))
    ref = reference(tmp_path, clips, shard_rows=3)
    path = str(tmp_path / "ranks")
    make_store(path)
    child = mp.get_context("spawn").Process(target=_rank_worker, args=(path, 1, 2, clips))
    child.start()                                        # rank 1 in a second process ...
    _rank_worker(path, 0, 2, clips)                      # ... while this one writes rank 0
    child.join(180)
    assert child.exitcode == 0

    with pytest.warns(UserWarning, match="not merged"):
        ActivationStore.open(path)
    by_rank = ActivationStore.merge(path)                # default: rank, then shard
    assert by_rank.labels["clip"].tolist() == [f"clip{i:03d}" for i in clips[0::2] + clips[1::2]]
    merged = ActivationStore.merge(path, order=[f"clip{i:03d}" for i in clips])
    assert_same_content(merged, ref)
    assert_same_content(ActivationStore.merge(path), ref)   # the order is remembered ...
    with ActivationStore.open(path).writer(shard_rows=3, rank=1, world_size=2) as w:
        write(w, [13])                                   # ... and clips added later follow it
    assert ActivationStore.merge(path).labels["clip"].tolist() == [f"clip{i:03d}" for i in range(14)]
    with pytest.raises(StoreError, match="not in the given order"):
        ActivationStore.merge(path, order=[f"clip{i:03d}" for i in clips])
    assert merged.done_clips() == ref.done_clips() | {"clip013"}
    assert merged.verify()["shards"] == 6


def test_same_clip_from_two_ranks_is_refused_at_merge(tmp_path):
    store = make_store(tmp_path / "s")
    for rank in range(2):
        with store.writer(shard_rows=4, rank=rank, world_size=2) as w:
            write(w, [1, 2] if rank == 0 else [2, 3])
    with pytest.raises(StoreError, match="clip 'clip002' is stored twice"):
        ActivationStore.merge(tmp_path / "s")


# ----------------------------------------------------------------------------- API errors

def test_writer_and_create_errors(tmp_path):
    store = make_store(tmp_path / "s")
    with pytest.raises(StoreError, match="already exists"):
        make_store(tmp_path / "s")
    # an empty store takes another configuration (nothing is lost); one with rows refuses it
    other = ActivationStore.create(tmp_path / "s", fingerprint="other", hooks=SHAPES, pooling="mean",
                                   num_codebooks=4, frame_rate=10.0, meta={"text": "unit test"},
                                   exist_ok=True)
    assert other.fingerprint == "other"
    store = make_store(tmp_path / "s", exist_ok=True)
    with store.writer(shard_rows=4) as w:
        write(w, [7])
    with pytest.raises(StoreError, match="model: the store has"):
        ActivationStore.create(tmp_path / "s", fingerprint="other", hooks=SHAPES, pooling="mean",
                               num_codebooks=4, frame_rate=10.0, meta={"text": "unit test"},
                               exist_ok=True)
    one = {h: v.unsqueeze(0) for h, v in clip_acts(0).items()}
    with store.writer(shard_rows=4) as w:
        with pytest.raises(StoreError, match="held by another writer"):
            store.writer(rank=0)
        with pytest.raises(ValueError, match=r"missing \['blocks.1.attn.hook_z'\]"):
            w.add([0], {RESID: one[RESID]})
        with pytest.raises(ValueError, match=r"rows have shape \[9\]"):
            w.add([0], {RESID: torch.zeros(1, 9), HOOK_Z: one[HOOK_Z]})
        with pytest.raises(ValueError, match="reserved"):
            w.add([0], one, [{"frame": 3}])
        w.add([0], one)
        w.add([1], one)
        with pytest.raises(ValueError, match="already stored"):
            w.add([0], one)
    with store.writer() as w, pytest.raises(ValueError, match="already stored"):
        w.add([1], one)


# ----------------------------------------------------------------------------- memory

def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:    # Linux: VmHWM <- current RSS
        f.write("5")


def _peak_growth_worker(path: str, sizes: list, queue) -> None:
    """For each number of clips: reset the peak RSS, write a store, report peak - start (MiB)."""
    torch.set_num_threads(1)
    out = {}
    for n in [5] + sizes:                                # 5 clips first: warm every code path
        store = ActivationStore.create(f"{path}/n{n}", fingerprint="m", hooks={"h": [16384]},
                                       pooling="mean")
        _reset_peak_rss()
        start = _peak_rss_mib()
        with store.writer(shard_rows=20) as w:           # 64 KiB per row, 1.25 MiB per shard
            for first in range(0, n, 5):
                w.add(list(range(first, first + 5)), {"h": torch.randn(5, 16384)},
                      [{"i": i} for i in range(first, first + 5)])
        assert len(ActivationStore.open(f"{path}/n{n}")) == n
        out[n] = _peak_rss_mib() - start
    queue.put(out)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_peak_memory_does_not_grow_with_the_number_of_clips(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_peak_growth_worker, args=(str(tmp_path), [50, 500], queue))
    p.start()
    growth = queue.get(timeout=300)
    p.join(60)
    assert p.exitcode == 0
    # keeping every clip would add 500 x 64 KiB = 31 MiB (vs 3 MiB for 50); a flat writer ~0
    assert growth[500] - growth[50] < 8.0, growth
