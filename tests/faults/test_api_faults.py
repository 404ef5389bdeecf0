"""Faults and bad input through the Python API: damaged files byte by byte (store, steering vectors,
directions, weights), hooks that return the wrong thing, bad steering and generation arguments,
damaged audio. Each case asserts the error type, that the message names the input and says what
to do, and that nothing was changed or left behind (hooks detached, data bit-identical)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import mstools
from faults_common import assert_same_store
from mstools.analysis.directions import Direction, load_directions, save_directions
from mstools.core.errors import ArtifactError, BadInputError, MissingWeightsError, StoreError, StoreIntegrityError
from mstools.data.caching import cache_activations
from mstools.data.sources import testbed_clips
from mstools.data.store import ActivationStore
from mstools.model.hookpoints import HookOutputError
from mstools.steering import Steering, SteeringVector, apply, sweep, window

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny():
    return mstools.build_musicgen("tiny", seed=0)


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """A store of 24 clips in 6 shards, and a pristine copy to compare with after repairs."""
    root = tmp_path_factory.mktemp("store")
    cache_activations(tiny, testbed_clips(24, 1.0, seed=3), root / "s", HOOK, batch_size=4,
                              shard_rows=4, progress=False)
    shutil.copytree(root / "s", root / "pristine")
    return root


@pytest.fixture
def store(built, tmp_path):
    shutil.copytree(built / "pristine", tmp_path / "s")
    return ActivationStore.open(tmp_path / "s")


def _recache(tiny, path):
    return cache_activations(tiny, testbed_clips(24, 1.0, seed=3), path, HOOK, batch_size=4,
                             shard_rows=4, progress=False)


def _hooks_attached(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- store damage

def _flip(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_tensor_byte_is_refused_on_read_and_repaired_on_resume(tiny, built, store):
    _flip(store.path / "rank000-00002.safetensors")
    with pytest.raises(StoreIntegrityError, match="rank000-00002.safetensors .*corrupt.*verify\\(repair=True\\)"):
        store.features(HOOK)
    with pytest.raises(StoreIntegrityError, match="rank000-00002"):
        list(store.iter_batches(HOOK, rows=5))
    assert not any(c.startswith("testbed-3-00000") and c.endswith(("8", "9")) for c in store.done_clips())
    with pytest.warns(UserWarning, match="recomputed"):
        _recache(tiny, store.path)
    assert_same_store(store.path, built / "pristine")


def test_swapped_shards_are_refused(built, store):
    by_size: dict[int, list[Path]] = {}
    for s in sorted(store.path.glob("rank000-*.safetensors")):
        by_size.setdefault(s.stat().st_size, []).append(s)
    a, b = next(v for v in by_size.values() if len(v) >= 2)[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(StoreIntegrityError, match="corrupt"):
        store.features(HOOK)
    with pytest.raises(StoreIntegrityError) as err:
        store.verify()
    assert {a.name, b.name} <= set(err.value.problems)


@pytest.mark.parametrize("damage", ["truncate", "delete", "zero_header"])
def test_truncated_missing_or_unreadable_shard(tiny, built, store, damage):
    shard = store.path / "rank000-00003.safetensors"
    if damage == "truncate":
        with open(shard, "r+b") as f:
            f.truncate(100)
    elif damage == "delete":
        shard.unlink()
    else:
        data = bytearray(shard.read_bytes())
        data[:8] = b"\xff" * 8
        shard.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match="rank000-00003"):
        store.features(HOOK)
    report = store.verify(repair=True)
    assert report["removed"] == ["rank000-00003.safetensors"]
    _recache(tiny, store.path)
    assert_same_store(store.path, built / "pristine")


@pytest.mark.parametrize("damage", [b"\x00\xff\xfe random bytes \x80\x81", b'{"format": "mstools.activation_store", "vers'])
def test_damaged_manifest_says_how_to_rebuild(built, store, damage):
    (store.path / "manifest.json").write_bytes(damage)
    with pytest.raises(StoreError, match="ActivationStore.merge"):
        ActivationStore.open(store.path)
    rebuilt = ActivationStore.merge(store.path)
    assert_same_store(rebuilt, built / "pristine")


def test_deleted_manifest_is_rebuilt_from_the_ranks(built, store):
    (store.path / "manifest.json").unlink()
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(store.path)
    assert_same_store(ActivationStore.merge(store.path), built / "pristine")


@pytest.mark.parametrize("which", ["labels", "index"])
def test_damaged_side_files(built, store, which):
    side = next(store.path.glob(f"{which}-*"))
    _flip(side, 20)
    again = ActivationStore.open(store.path)
    with pytest.raises(StoreError, match="does not match the manifest.*ActivationStore.merge"):
        again.labels if which == "labels" else again.features(HOOK)
    side.unlink()
    with pytest.raises(StoreError, match="is missing"):
        ActivationStore.open(store.path).labels if which == "labels" else ActivationStore.open(store.path).features(HOOK)
    assert_same_store(ActivationStore.merge(store.path), built / "pristine")


def test_damaged_partial_manifest_is_named(store):
    (store.path / "rank000.manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="rank000.manifest.json .*not valid JSON"):
        ActivationStore.merge(store.path)


def test_old_format_store_is_upgraded_by_merge(built, store):
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["version"] = 1
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="version 1.*ActivationStore.merge"):
        ActivationStore.open(store.path)
    assert_same_store(ActivationStore.merge(store.path), built / "pristine")


def test_stale_temp_files_and_locks(tiny, built, store):
    (store.path / ".rank000-00009.safetensors.123.tmp").write_bytes(b"half a shard")
    with store.writer(rank=0):
        with pytest.raises(StoreError, match="held by another writer"):
            store.writer(rank=0)
        assert list(store.path.glob(".rank000.lock"))
    assert not list(store.path.glob(".*.tmp")) and not list(store.path.glob(".*.lock"))
    assert_same_store(store, built / "pristine")


def test_empty_store_takes_a_corrected_configuration(tiny, tmp_path):
    ActivationStore.create(tmp_path / "s", fingerprint="x", hooks=[HOOK], pooling="mean")
    store = _recache(tiny, tmp_path / "s")  # another model, but nothing was written: reconfigured
    assert store.fingerprint == tiny.fingerprint and len(store) == 24


def test_store_of_another_model_is_refused_and_kept(built, store):
    other = mstools.build_musicgen("tiny", seed=1)
    with pytest.raises(StoreError, match="model: the store has"):
        _recache(other, store.path)
    assert_same_store(store, built / "pristine")


# ----------------------------------------------------------------------------- hooks

@pytest.mark.parametrize("bad, needle", [
    (lambda x, hook: x[:1], "returned shape"),
    (lambda x, hook: x.double(), "returned dtype torch.float64"),
    (lambda x, hook: x.numpy(), "numpy.ndarray"),
    (lambda x, hook: 3.0, "builtins.float"),
    (lambda x, hook: x.to("meta"), "on meta"),
    (lambda x, hook: x.unsqueeze(0), "returned shape"),
], ids=["fewer-rows", "dtype", "numpy", "float", "device", "extra-dim"])
def test_a_hook_returning_the_wrong_thing_is_named(tiny, bad, needle):
    before = _hooks_attached(tiny)
    with pytest.raises(HookOutputError, match=f"at '{HOOK}'.*{needle}"):
        tiny.generate(["a", "b"], 0.2, fwd_hooks=[(HOOK, bad)], decode=False)
    assert _hooks_attached(tiny) == before


def test_a_hook_that_raises_or_is_interrupted_is_removed(tiny):
    before = _hooks_attached(tiny)
    codes = torch.zeros(1, 4, 5, dtype=torch.long)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        def hook(x, hook, exc=exc):
            raise exc
        with pytest.raises(type(exc)):
            tiny.run_with_hooks(codes, ["a"], fwd_hooks=[(HOOK, hook)]) if hasattr(tiny, "run_with_hooks") \
                else tiny.generate(["a"], 0.2, fwd_hooks=[(HOOK, hook)])
        assert _hooks_attached(tiny) == before
    clean = tiny(codes, ["a"])
    assert torch.equal(clean, tiny(codes, ["a"]))


def test_unknown_hook_name_suggests(tiny):
    with pytest.raises(KeyError, match="Did you mean 'blocks.1.hook_resid_post'"):
        tiny.generate(["a"], 0.2, fwd_hooks=[("blocks.1.hook_resid_psot", lambda x, hook: x)])


# ----------------------------------------------------------------------------- steering

def _vec(model, scale: float = 1.0) -> SteeringVector:
    return SteeringVector({HOOK: torch.ones(model.d_model) * scale}, model.fingerprint, source="ones")


@pytest.mark.parametrize("strength, err, needle", [
    (float("nan"), ValueError, "finite"), (float("inf"), ValueError, "finite"), ("1", TypeError, "real number"),
    (True, TypeError, "bool"), (1e30, BadInputError, "strength 1e\\+30"),
])
def test_bad_strengths(tiny, strength, err, needle):
    with pytest.raises(err, match=needle):
        with apply(_vec(tiny), tiny, strength):
            tiny.generate(["a"], 0.2, decode=False)


def test_window_past_the_clip_is_refused(tiny):
    with pytest.raises(BadInputError, match="zero over the whole"):
        sweep(tiny, ["a"], [Steering(_vec(tiny), 1.0, window(5.0, None))], 0.4)


def test_vector_for_another_model_or_size_or_hook(tiny):
    other = SteeringVector({HOOK: torch.ones(tiny.d_model)}, "someone-else:123", source="x")
    with pytest.raises(ValueError, match="made for"):
        with apply(other, tiny, 1.0):
            pass
    wrong = SteeringVector({HOOK: torch.ones(tiny.d_model + 1)}, tiny.fingerprint, source="x")
    with pytest.raises(ValueError, match="expected a direction of shape"):
        with apply(wrong, tiny, 1.0):
            pass
    typo = SteeringVector({"blocks.1.hook_resid_psot": torch.ones(tiny.d_model)}, tiny.fingerprint, source="x")
    with pytest.raises(ValueError, match="did you mean"):
        with apply(typo, tiny, 1.0):
            pass


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "missing"])
def test_damaged_vector_and_directions_files(tiny, tmp_path, damage):
    v = SteeringVector({HOOK: torch.randn(tiny.d_model)}, tiny.fingerprint, source="raw", units="raw")
    d = [Direction(torch.randn(tiny.d_model), HOOK, "jazz", "diff_means", 1.0)]
    for path, save, load in ((tmp_path / "v.safetensors", v.save, SteeringVector.load),
                             (tmp_path / "d.safetensors", lambda p: save_directions(p, d), load_directions)):
        save(path)
        if damage == "flip":
            _flip(path)
            err, needle = ArtifactError, "corrupt"
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[:40])
            err, needle = ArtifactError, "not a readable safetensors"
        elif damage == "foreign":
            from safetensors.torch import save_file
            save_file({"x": torch.zeros(2)}, str(path))
            err, needle = ArtifactError, "no mstools header"
        else:
            path.unlink()
            err, needle = FileNotFoundError, "no file"
        with pytest.raises(err, match=needle):
            load(path)


# ----------------------------------------------------------------------------- generation and audio

@pytest.mark.parametrize("kw, needle", [
    (dict(temperature=0.0), "temperature must be > 0"), (dict(temperature=float("nan")), "temperature must be a finite"),
    (dict(top_k=-1), "top_k must be an integer >= 0"), (dict(top_k=1.5), "top_k must be an integer"),
    (dict(top_p=2.0), "top_p must lie in"), (dict(cfg_coef=-1.0), "cfg_coef must be >= 0"),
    (dict(duration=0.001), "shorter than one frame"), (dict(duration=float("nan")), "positive number of seconds"),
    (dict(duration=1e6), "exceeds this model's max_duration"), (dict(prompts=[3]), "prompts must be strings"),
    (dict(prompts=[]), "at least one prompt"), (dict(two_step_cfg=True), "two_step_cfg is not supported"),
    (dict(bogus=1), "unknown generation parameter"), (dict(noise_ids=[1, 2]), "one per clip"),
    (dict(top_k=10**6), "exceeds this model's codebook size"),
])
def test_bad_generation_arguments(tiny, kw, needle):
    prompts = kw.pop("prompts", ["a"])
    duration = kw.pop("duration", 0.2)
    with pytest.raises((ValueError, TypeError), match=needle):
        tiny.generate(prompts, duration, decode=False, **kw)


@pytest.mark.parametrize("wav, needle", [
    (torch.full((1, 1, 1600), float("nan")), "NaN or infinite"),
    (torch.full((1, 1, 1600), float("inf")), "NaN or infinite"),
    (torch.zeros(2, 1, 1600), "2 clips for 1 prompts"),
    (torch.zeros(1600), r"must be \[B, C, N\]"),
])
def test_bad_audio_prompts(tiny, wav, needle):
    with pytest.raises(ValueError, match=needle):
        tiny.generate(["a"], 0.5, audio_prompt=wav, audio_prompt_sample_rate=16000)
    with pytest.raises(ValueError, match="sample rate"):
        tiny.generate(["a"], 0.5, audio_prompt=torch.zeros(1, 1, 1600))


def test_nan_audio_cannot_be_encoded(tiny):
    with pytest.raises(ValueError, match="NaN"):
        tiny.encode_audio(torch.full((1, 1, 3200), float("nan")), 16000)


# ----------------------------------------------------------------------------- model loading

@pytest.mark.parametrize("name, needle", [("testbd", "unknown model 'testbd'"), ("small", "is an architecture"),
                                          ("random-huge", "random models are"), ("", "non-empty string")])
def test_unknown_model_names(name, needle):
    with pytest.raises(BadInputError, match=needle):
        mstools.load_musicgen(name)


def test_checkpoint_folder_without_weights_or_with_pickles(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="lacks state_dict.bin, compression_state_dict.bin"):
        mstools.load_musicgen(str(tmp_path / "empty"))
    folder = tmp_path / "pickled"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"best_state": Evil()}, folder / "state_dict.bin")
    torch.save({}, folder / "compression_state_dict.bin")
    with pytest.raises(MissingWeightsError, match="weights_only=True"):
        mstools.load_musicgen(str(folder))


def test_corrupt_testbed_weights_are_refused(tmp_path):
    from mstools.testbed.model import WEIGHTS_DIR, load_testbed_musicgen
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, copy)
    weights = next(copy.glob("*.safetensors"))
    _flip(weights, len(weights.read_bytes()) // 2)
    with pytest.raises(ValueError, match="corrupt or half-written"):
        load_testbed_musicgen(copy)


def test_a_sweep_without_settings_names_the_settings(tiny):
    with pytest.raises(ValueError, match="at least one setting"):
        sweep(tiny, ["a"], [], 0.2)


def test_non_latin_prompts_are_not_dropped():
    """The testbed reads words it does not know as unknown words, not as nothing: a Chinese prompt
    with an emoji conditions the model differently from the empty prompt, and "café" is one word."""
    model = mstools.load_musicgen("testbed")
    codes = torch.randint(0, model.card, (1, model.num_codebooks, 20))
    chinese, empty = model(codes, ["流行音乐 🎸"]), model(codes, [""])
    assert not torch.allclose(chinese, empty, atol=1e-3)
    assert not torch.allclose(model(codes, ["café rock"]), model(codes, ["rock"]), atol=1e-3)
