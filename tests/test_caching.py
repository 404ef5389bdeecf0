"""cache_activations and the sources, against references computed directly with the model.

References: ``run_with_cache`` / ``generate(cache=...)`` called by the test itself on batches it
forms by hand (from the documented batching rule, with token counts read from the text tokenizer
itself), pooled by hand (mean over steps, or the completing step of each frame), cast to the stored
dtype and compared bit for bit; labels from the testbed's own ``make_dataset``, folder names and CSV
rows written by the test; an uninterrupted run for resume.

Model tests run on both backends (:data:`conftest.BACKENDS`). The padding test swaps audiocraft's
text tokenizer (its cross-attention has no padding mask) and runs on audiocraft only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import load_testbed, prompt_token_count, tiny_model

from mstools import build_musicgen
from mstools.data.caching import batch_seed, cache_activations, plan_batches
from mstools.data.pooling import Pooling
from mstools.data.sources import (Item, audio_folder, generated_continuations, prompt_set,
                             testbed_clips)
from mstools.data.store import ActivationStore, StoreError
from mstools.testbed import make_dataset

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def model(backend):
    return tiny_model(backend)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def assert_rows_equal(store: ActivationStore, expected: dict[str, torch.Tensor]) -> None:
    """Stored rows (stored dtype) equal the expected float tensors cast to float16, bit for bit."""
    for hook, want in expected.items():
        got = store.features(hook, dtype=None)
        assert got.dtype == torch.float16
        assert got.shape == want.shape, hook
        assert torch.equal(bits(got), bits(want.to(torch.float16))), hook


def interleave(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Rows clip0/cond, clip0/uncond, clip1/cond, ... (the store's order)."""
    return torch.stack([cond, uncond], dim=1).reshape(-1, *cond.shape[1:])


def hand_batches(keys: list, batch_size: int) -> list[list[int]]:
    """Item indices batched by the documented rule: one key (token length) per batch, a batch
    emitted when its group is full, the remainders afterwards in order of first appearance."""
    groups: dict = {}
    batches = []
    for i, key in enumerate(keys):
        group = groups.setdefault(key, [])
        group.append(i)
        if len(group) == batch_size:
            batches.append(groups.pop(key))
    return batches + list(groups.values())


# ----------------------------------------------------------------------------- teacher forcing

@pytest.mark.parametrize("how", ["mean", "frame"])
def test_teacher_forcing_store_equals_run_with_cache(model, tmp_path, how):
    clips = make_dataset(6, frames=10, seed=3)
    store = cache_activations(model, testbed_clips(6, seconds=1.0, seed=3), tmp_path / "s", HOOKS,
                              Pooling(how), batch_size=4, branches=("cond", "uncond"),
                              progress=False)
    k = model.num_codebooks
    keys = [prompt_token_count(model, c.prompt) for c in clips]
    per_clip: dict[int, dict[str, torch.Tensor]] = {}
    for idx in hand_batches(keys, 4):  # audiocraft's one-token LUT: [0-3], [4-5]
        codes = torch.stack([clips[i].codes for i in idx])
        _, cond = model.run_with_cache(codes, [clips[i].prompt for i in idx], names_filter=HOOKS)
        _, uncond = model.run_with_cache(codes, None, names_filter=HOOKS)
        for j, i in enumerate(idx):
            rows = {}
            for h in HOOKS:
                c, u = cond[h][j:j + 1], uncond[h][j:j + 1]
                if how == "mean":
                    c, u = c.mean(dim=1), u.mean(dim=1)
                else:  # frame f sits at step f + K - 1; T = 10 frames
                    c, u = c[:, k - 1:k - 1 + 10], u[:, k - 1:k - 1 + 10]
                rows[h] = interleave(c, u)
            per_clip[i] = rows
    expected_rows = {h: torch.cat([per_clip[i][h] for i in range(6)]) for h in HOOKS}  # source order
    if how == "frame":
        expected_rows = {h: v.reshape(-1, *v.shape[2:]) for h, v in expected_rows.items()}
    assert_rows_equal(store, expected_rows)

    labels = store.labels
    per_clip = 2 * (10 if how == "frame" else 1)
    assert len(labels) == 6 * per_clip
    first = labels.groupby("clip", sort=False).first()
    assert list(first.index) == [f"testbed-3-{i:06d}" for i in range(6)]
    for factor in ("genre", "tempo", "instrument", "dynamics"):
        assert first[factor].tolist() == [c.labels[factor] for c in clips]
    assert first["prompt"].tolist() == [c.prompt for c in clips]
    assert labels["branch"].tolist()[:per_clip] == (["cond"] * (per_clip // 2) + ["uncond"] * (per_clip // 2)
                                                    if how == "frame" else ["cond", "uncond"])
    if how == "frame":
        assert labels["frame"].tolist()[:10] == list(range(10))


# ----------------------------------------------------------------------------- generation

def test_generation_store_equals_generate_cache(model, tmp_path):
    source = prompt_set(["{genre} music"], {"genre": ["jazz", "rock", "folk"]})
    store = cache_activations(model, source, tmp_path / "g", HOOKS, "mean", batch_size=2,
                              branches=("cond", "uncond"), duration=0.8, seed=5, progress=False)
    expected: dict[str, list] = {h: [] for h in HOOKS}
    # 3 prompts of one token length, batch size 2: batches [jazz, rock] (index 0) and [folk] (index 1)
    assert len({prompt_token_count(model, f"{g} music") for g in ("jazz", "rock", "folk")}) == 1
    for index, prompts in enumerate([["jazz music", "rock music"], ["folk music"]]):
        out = model.generate(prompts, 0.8, seed=5 * 1_000_003 + index, cache=HOOKS)
        for h in HOOKS:
            expected[h].append(interleave(out.cache.cond[h].mean(dim=1),
                                          out.cache.uncond[h].mean(dim=1)))
    assert_rows_equal(store, {h: torch.cat(v) for h, v in expected.items()})
    assert store.labels["genre"].tolist() == ["jazz", "jazz", "rock", "rock", "folk", "folk"]
    assert store.labels["clip"].tolist()[::2] == ["t0|genre=jazz|r0", "t0|genre=rock|r0",
                                                  "t0|genre=folk|r0"]


# ----------------------------------------------------------------------------- resume

class Interrupting:
    """A source that raises KeyboardInterrupt after yielding ``stop`` items."""

    def __init__(self, source, stop: int):
        self.source, self.stop = source, stop
        self.description = source.description

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        for i, item in enumerate(self.source):
            if i == self.stop:
                raise KeyboardInterrupt
            yield item


def test_resume_after_interrupt_equals_uninterrupted_run(model, tmp_path):
    source = prompt_set(["{genre} music with {instrument}"],
                        {"genre": ["jazz", "rock"], "instrument": ["piano", "brass", "drums"]})
    kw = dict(hooks=HOOKS, pooling="mean", batch_size=2, branches=("cond", "uncond"),
              duration=0.6, seed=1, shard_rows=6, progress=False)  # a shard = 3 clips x 2 branches
    assert len({prompt_token_count(model, it.prompt) for it in source}) == 1  # batches of 2 in order
    reference = cache_activations(model, source, tmp_path / "ref", **kw)

    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, Interrupting(source, stop=5), tmp_path / "run", **kw)
    ids = [it.clip_id for it in source]
    with pytest.warns(UserWarning, match="not merged"):
        interrupted = ActivationStore.open(tmp_path / "run")
    # clips 0-2 reached a shard; clip 3 (second half of batch 1) was lost with the interrupt,
    # so the resumed run recomputes batch 1 and keeps only clip 3 from it
    assert interrupted.done_clips() == set(ids[:3])

    resumed = cache_activations(model, source, tmp_path / "run", **kw)
    pd.testing.assert_frame_equal(resumed.labels, reference.labels)
    for h in HOOKS:
        assert torch.equal(bits(resumed.features(h, None)), bits(reference.features(h, None))), h
    assert resumed.verify()["rows"] == len(reference) == 12


# ----------------------------------------------------------------------------- refusal

def test_store_made_with_another_model_or_settings_is_refused(model, tmp_path):
    source = testbed_clips(3, seconds=1.0, seed=0)
    store = cache_activations(model, source, tmp_path / "s", HOOKS[:1], progress=False)
    before = store.features(HOOKS[0], None).clone()
    other = tiny_model(model.backend_name, seed=1)
    with pytest.raises(StoreError, match=r"(?s)model: the store has 'random-tiny:.*this run asks"):
        cache_activations(other, source, tmp_path / "s", HOOKS[:1], progress=False)
    with pytest.raises(StoreError, match="hooks"):
        cache_activations(model, source, tmp_path / "s", HOOKS[1:2], progress=False)
    with pytest.raises(StoreError, match="pooling"):
        cache_activations(model, source, tmp_path / "s", HOOKS[:1], "last", progress=False)
    again = ActivationStore.open(tmp_path / "s")
    assert len(again) == 3 and torch.equal(bits(again.features(HOOKS[0], None)), bits(before))


def test_store_made_on_another_backend_is_refused(tmp_path):
    """The testbed has one fingerprint on both backends, but a store keeps rows of one backend
    (two implementations differ in the last bits). audiocraft stores do not name their backend
    (those written before the transformers backend existed stay resumable)."""
    source = testbed_clips(2, seconds=1.0, seed=0)
    ac, hf = load_testbed("audiocraft"), load_testbed("transformers")
    assert ac.fingerprint == hf.fingerprint
    kw = dict(hooks=HOOKS[:1], progress=False)
    store = cache_activations(ac, source, tmp_path / "ac", **kw)
    assert "backend" not in store.meta
    with pytest.raises(StoreError, match="backend: the store has 'audiocraft', this run asks for "
                                         "'transformers'"):
        cache_activations(hf, source, tmp_path / "ac", **kw)
    store = cache_activations(hf, source, tmp_path / "hf", **kw)
    assert store.meta["backend"] == "transformers"
    with pytest.raises(StoreError, match="backend: the store has 'transformers', this run asks for "
                                         "'audiocraft'"):
        cache_activations(ac, source, tmp_path / "hf", **kw)
    assert len(cache_activations(hf, source, tmp_path / "hf", **kw)) == 2  # same backend resumes


# ----------------------------------------------------------------------------- audio

def write_tone(path, freq: float, sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    wav = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([wav] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype="FLOAT")
    return data


@pytest.fixture
def gtzan(tmp_path):
    """genres/{blues,jazz,metal}/*.wav: sines at 16 kHz, one 22.05 kHz stereo file (GTZAN's rate)."""
    root = tmp_path / "genres"
    write_tone(root / "blues" / "blues.00000.wav", 220.0, 16000, 0.5)
    write_tone(root / "blues" / "blues.00001.wav", 330.0, 16000, 0.5)
    write_tone(root / "jazz" / "jazz.00000.wav", 440.0, 22050, 0.5, channels=2)
    write_tone(root / "metal" / "metal.00000.wav", 550.0, 16000, 0.5)
    return root


def test_audio_folder_gtzan_layout_labels_and_activations(model, gtzan, tmp_path):
    src = audio_folder(gtzan)
    assert len(src) == 4
    store = cache_activations(model, src, tmp_path / "a", HOOKS, batch_size=1, progress=False)
    files = ["blues/blues.00000.wav", "blues/blues.00001.wav", "jazz/jazz.00000.wav",
             "metal/metal.00000.wav"]
    assert store.labels["clip"].tolist() == files
    assert store.labels["genre"].tolist() == ["blues", "blues", "jazz", "metal"]
    expected: dict[str, list] = {h: [] for h in HOOKS}
    for rel in files:
        data, sr = sf.read(str(gtzan / rel), dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)[None]  # [1, 1, N] mono
        codes = model.encode_audio(wav, sr)
        _, cache = model.run_with_cache(codes, None, names_filter=HOOKS)
        for h in HOOKS:
            expected[h].append(cache[h].mean(dim=1))
    assert_rows_equal(store, {h: torch.cat(v) for h, v in expected.items()})

    # batches group files of the same sample rate and length
    batches = [[it.clip_id for it in b.items] for b in plan_batches(model, src, batch_size=4)]
    assert batches == [[files[0], files[1], files[3]], [files[2]]]


def test_audio_folder_csv_overrides_and_extends_labels(gtzan, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,genre,tempo,prompt\n"
                   "jazz/jazz.00000.wav,bebop,180,fast jazz\n"
                   "blues/blues.00001.wav,,72,\n")
    items = {it.clip_id: it for it in audio_folder(gtzan, csv)}
    assert items["jazz/jazz.00000.wav"].labels == {"genre": "bebop", "tempo": 180}
    assert items["jazz/jazz.00000.wav"].prompt == "fast jazz"
    assert items["blues/blues.00001.wav"].labels == {"genre": None, "tempo": 72}
    assert items["blues/blues.00000.wav"].labels == {"genre": "blues"}
    assert items["metal/metal.00000.wav"].prompt is None


def test_audio_folder_errors_name_the_problem(gtzan, tmp_path):
    empty = tmp_path / "empty"
    (empty / "rock").mkdir(parents=True)
    (empty / "rock" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="no audio files"):
        audio_folder(empty)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,genre\nblues/blues.00000.wav,blues\nrock/rock.00042.wav,rock\n")
    with pytest.raises(FileNotFoundError, match=r"line 3: .*rock/rock\.00042\.wav does not exist"):
        audio_folder(gtzan, csv)
    (gtzan / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    with pytest.raises(ValueError, match=r"1 audio file\(s\).*cannot be read:\n  jazz/jazz\.00054\.wav"):
        audio_folder(gtzan)
    with pytest.warns(UserWarning, match="jazz.00054.wav"):
        assert len(audio_folder(gtzan, skip_unreadable=True)) == 4


def test_continuations_store_equals_generate_with_audio_prompt(model, gtzan, tmp_path):
    src = generated_continuations(audio_folder(gtzan), ["jazz", None], prompt_seconds=0.3)
    assert len(src) == 8
    store = cache_activations(model, src, tmp_path / "c", HOOKS[:1], batch_size=1, duration=0.6,
                              seed=2, progress=False)
    ids = store.labels["clip"].tolist()
    assert ids[:2] == ["blues/blues.00000.wav>p0", "blues/blues.00000.wav>p1"]
    assert store.labels["genre"].tolist() == ["blues"] * 4 + ["jazz"] * 2 + ["metal"] * 2
    prompts = store.labels["prompt"]
    assert prompts[0] == "jazz" and pd.isna(prompts[1])
    rows = []
    for index, item in enumerate(src):  # batch size 1: batch j is item j
        data, sr = sf.read(item.audio_path, dtype="float32", always_2d=True,
                           frames=int(round(0.3 * sf.info(item.audio_path).samplerate)))
        wav = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)[None]
        out = model.generate([item.prompt], 0.6, seed=batch_seed(2, index), cache=HOOKS[:1],
                             audio_prompt=wav, audio_prompt_sample_rate=sr)
        assert out.cache.steps[0] == 0  # the audio prompt's steps are cached too
        rows.append(out.cache.cond[HOOKS[0]].mean(dim=1))
    assert_rows_equal(store, {HOOKS[0]: torch.cat(rows)})


# ----------------------------------------------------------------------------- batching

class PaddingTokenizer:
    """Whitespace words hashed to ids, padded to the batch's longest prompt (like audiocraft's
    WhiteSpaceTokenizer, without spaCy): the padding is attended to by cross-attention."""

    def __call__(self, texts):
        rows = [[1 + (sum(map(ord, w)) % 1000) for w in (t or "").split()] for t in texts]
        width = max(1, max(len(r) for r in rows))
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.int)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return tokens, mask


@pytest.mark.audiocraft_only
def test_prompts_are_batched_by_token_length_so_rows_do_not_depend_on_the_batch(tmp_path):
    """audiocraft: its cross-attention has no padding mask, so the planner's grouping is what keeps
    rows independent of their batch (transformers masks padding: test_hooked's batch invariance)."""
    padded = build_musicgen("tiny", seed=0)
    padded.lm.condition_provider.conditioners["description"].tokenizer = PaddingTokenizer()
    prompts = ["jazz", "slow rock with brass", "soft folk", "rock", "loud metal music",
               "soft jazz"]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, padded.card, (len(prompts), 4, 12), generator=g)
    items = [Item(f"c{i}", prompt=p, codes=codes[i]) for i, p in enumerate(prompts)]

    lengths = [[len(it.prompt.split()) for it in b.items]
               for b in plan_batches(padded, items, batch_size=4)]
    assert lengths == [[1, 1], [4], [2, 2], [3]]  # one token length per batch, first-seen order

    hook = "blocks.1.hook_resid_post"
    store = cache_activations(padded, items, tmp_path / "t", hook, batch_size=4, progress=False)
    stored = store.features(hook)
    alone = torch.cat([padded.run_with_cache(codes[i:i + 1], [p], names_filter=hook)[1][hook]
                       .mean(dim=1) for i, p in enumerate(prompts)])
    torch.testing.assert_close(stored, alone, atol=2e-3, rtol=2e-3)  # float16 storage
    # control: one mixed batch pads the short prompts, and their rows move far beyond that
    _, mixed = padded.run_with_cache(codes, prompts, names_filter=hook)
    assert (mixed[hook].mean(dim=1) - alone).abs().max() > 0.05


def test_prompt_set_order_ids_and_label_use(tmp_path):
    src = prompt_set(["{genre} with {instrument}", "just {genre}", "silence"],
                     {"genre": ["jazz", "rock"], "instrument": ["piano", "brass"]}, repeats=2)
    items = list(src)
    assert len(src) == len(items) == (4 + 2 + 1) * 2
    assert [it.prompt for it in items[:4]] == ["jazz with piano"] * 2 + ["jazz with brass"] * 2
    assert items[8].clip_id == "t1|genre=jazz|r0" and items[8].labels == {"genre": "jazz",
                                                                          "template": 1}
    assert items[-1].clip_id == "t2|r1" and items[-1].prompt == "silence"
    assert len({it.clip_id for it in items}) == len(items)
    with pytest.raises(ValueError, match=r"uses \['tempo'\]"):
        prompt_set(["{tempo} jazz"], {"genre": ["jazz"]})


def test_source_with_duplicate_clip_ids_is_refused(model, tmp_path):
    items = [Item("x", prompt="a"), Item("x", prompt="b")]
    with pytest.raises(ValueError, match="appears twice"):
        cache_activations(model, items, tmp_path / "d", HOOKS[:1], duration=0.2, progress=False)
