"""Shared test set-up: offline, CPU, pinned threads (the machine has 2 cores shared by everything).

Tests that hold on every backend take the module-scoped ``backend`` fixture (ids ``[audiocraft]`` /
``[transformers]``) and build their model with :func:`tiny_model` or :func:`load_testbed`. Their
references come from each library's own code, never through :class:`mstools.model.hooked.HookedMusicGen`:

- :func:`plain_logits` — audiocraft ``lm(seq, conditions=...)``; transformers
  ``decoder(input_ids=seq.reshape(B*K, S), encoder_hidden_states=h, ...)``;
- :func:`plain_generate` — audiocraft ``MusicGen.generate``; transformers
  ``MusicgenForConditionalGeneration.generate`` (with guidance 3, as MusicGen ships);
- :func:`manual_resid_posts` — each library's transformer layers called one by one;
- :func:`transformer_layer`, :func:`out_proj` — the library's own modules;
- :func:`prompt_token_count` — the text tokenizer called directly.

Tests about one library's internals (audiocraft streaming state, its module paths, its checkpoint
format, ``conditions()``) stay unparametrised and carry ``@pytest.mark.audiocraft_only``.

Example (in a test module)::

    from conftest import plain_logits, tiny_model

    @pytest.fixture(scope="module")
    def model(backend):
        return tiny_model(backend)

    def test_forward(model):
        codes = torch.randint(0, model.card, (1, model.num_codebooks, 8))
        assert torch.equal(model(codes, ["jazz"]), plain_logits(model, codes, ["jazz"]))
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MSTOOLS_TEST", "1")

from collections.abc import Callable, Sequence  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

#: Backends every shared test runs on.
BACKENDS = ("audiocraft", "transformers")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "audiocraft_only: about audiocraft internals (streaming "
                                       "state, module paths, checkpoint format, conditions()); "
                                       "not parametrised over backends")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``"audiocraft"`` then ``"transformers"`` (module scope: one model per backend and module)."""
    return request.param


def tiny_model(backend: str, seed: int = 0):
    """``build_musicgen("tiny", seed, backend=backend)``: 2 layers x 32, 4 codebooks of 64, 25 frames/s."""
    from mstools import build_musicgen
    return build_musicgen("tiny", seed=seed, backend=backend)


def load_testbed(backend: str):
    """The embedded testbed on ``backend`` (CPU)."""
    from mstools import load_musicgen
    return load_musicgen("testbed", device="cpu", backend=backend)


def _per_backend(table: dict[str, Callable]) -> Callable:
    def call(model, *args, **kwargs):
        return table[model.backend_name](model, *args, **kwargs)
    return call


# ----------------------------------------------------------------------------- teacher forcing

def _audiocraft_logits(model, codes: torch.Tensor, prompts: Sequence[str | None]) -> torch.Tensor:
    seq = model.to_sequence(codes)
    with torch.no_grad():
        return model.musicgen.lm(seq, conditions=model.conditions(prompts, codes.shape[0]))


def _transformers_logits(model, codes: torch.Tensor, prompts: Sequence[str | None]) -> torch.Tensor:
    seq = model.to_sequence(codes)
    b, k, s = seq.shape
    hidden, mask = model.backend.text.encode(list(prompts))
    with torch.no_grad():
        out = model.backend.decoder(input_ids=seq.reshape(b * k, s), encoder_hidden_states=hidden,
                                    encoder_attention_mask=mask, use_cache=False)
    return out.logits.reshape(b, k, s, -1)


#: ``plain_logits(model, codes [B, K, T], prompts) -> [B, K, T + K - 1, card]``: the library's own
#: forward pass on the delay-pattern sequence, no hook point involved.
plain_logits = _per_backend({"audiocraft": _audiocraft_logits,
                             "transformers": _transformers_logits})


def _audiocraft_resid_posts(model, codes, prompts) -> list[torch.Tensor]:
    from audiocraft.modules.transformer import create_sin_embedding
    lm = model.musicgen.lm
    seq = model.to_sequence(codes)
    outs = []
    with torch.no_grad():
        cond = lm.condition_provider(lm.condition_provider.tokenize(
            model.conditions(prompts, codes.shape[0])))
        x = sum(lm.emb[k](seq[:, k]) for k in range(model.num_codebooks))
        x, cross = lm.fuser(x, cond)
        pos = torch.arange(seq.shape[-1]).view(1, -1, 1)
        x = x + create_sin_embedding(pos, model.d_model, max_period=lm.transformer.max_period)
        for layer in lm.transformer.layers:
            x = layer(x, cross_attention_src=cross)
            outs.append(x)
    return outs


def _transformers_resid_posts(model, codes, prompts) -> list[torch.Tensor]:
    dec = model.backend.decoder.model.decoder
    seq = model.to_sequence(codes)
    b, k, s = seq.shape
    hidden, mask = model.backend.text.encode(list(prompts))
    low = torch.finfo(torch.float32).min
    causal = torch.full((s, s), low).triu(1).expand(b, 1, s, s)
    cross = None
    if mask is not None:  # additive mask over the text tokens
        cross = torch.where(mask.bool()[:, None, None, :], 0.0, low).expand(b, 1, s, mask.shape[1])
    outs = []
    with torch.no_grad():
        x = sum(dec.embed_tokens[q](seq[:, q]) for q in range(k)) + dec.embed_positions(seq, 0)
        for layer in dec.layers:
            x = layer(x, causal, hidden, encoder_attention_mask=cross, use_cache=False)
            outs.append(x)
    return outs


#: ``manual_resid_posts(model, codes, prompts) -> [Tensor [B, S, D]] * L``: each library's own
#: embeddings and transformer layers called one by one with explicit masks.
manual_resid_posts = _per_backend({"audiocraft": _audiocraft_resid_posts,
                                   "transformers": _transformers_resid_posts})

#: ``transformer_layer(model, l) -> nn.Module``: layer ``l`` of the library's transformer.
transformer_layer = _per_backend({
    "audiocraft": lambda model, l: model.musicgen.lm.transformer.layers[l],
    "transformers": lambda model, l: model.backend.decoder.model.decoder.layers[l],
})


def out_proj(model, layer: int) -> nn.Linear:
    """The self-attention output projection of ``layer`` (input: heads concatenated)."""
    return transformer_layer(model, layer).self_attn.out_proj


def _audiocraft_token_count(model, prompt: str | None) -> int:
    conditioner = model.musicgen.lm.condition_provider.conditioners["description"]
    tokens = conditioner.tokenize([prompt])
    return int((tokens[0] if isinstance(tokens, tuple) else tokens["input_ids"]).shape[-1])


#: ``prompt_token_count(model, prompt) -> int``: tokens the text encoder reads for ``prompt``.
prompt_token_count = _per_backend({
    "audiocraft": _audiocraft_token_count,
    "transformers": lambda model, prompt: len(model.backend.text.tokenizer(prompt or "")["input_ids"]),
})


# ----------------------------------------------------------------------------- generation

def _audiocraft_generate(model, prompts, duration, *, seed, top_k, use_sampling=True):
    mg = model.musicgen
    saved = (mg.duration, dict(mg.generation_params), mg.extend_stride)
    try:
        mg.set_generation_params(duration=duration, top_k=top_k, use_sampling=use_sampling)
        torch.manual_seed(seed)
        return mg.generate(list(prompts), return_tokens=True)[1]
    finally:
        mg.duration, mg.generation_params, mg.extend_stride = saved


def _transformers_generate(model, prompts, duration, *, seed, top_k, use_sampling=True):
    composite = model.backend.composite
    if composite is None or any(p is None for p in prompts):
        raise ValueError("plain_generate on transformers needs a MusicgenForConditionalGeneration "
                         "(build_musicgen(..., backend='transformers')) and text prompts")
    inputs = model.backend.text.tokenizer(list(prompts), return_tensors="pt", padding=True)
    frames = int(duration * model.frame_rate)
    seen: dict[str, torch.Tensor] = {}
    decode = composite.audio_encoder.decode

    def record(codes, *args, **kwargs):  # generate returns audio only: keep the codes it decodes
        seen["codes"] = codes
        return decode(codes, *args, **kwargs)
    composite.audio_encoder.decode = record
    try:
        torch.manual_seed(seed)
        composite.generate(**inputs, do_sample=use_sampling, guidance_scale=3.0, top_k=top_k,
                           max_new_tokens=frames + model.num_codebooks - 1)
    finally:
        del composite.audio_encoder.decode
    return seen["codes"][0]  # [1, B, K, T] -> [B, K, T]


#: ``plain_generate(model, prompts, duration, *, seed, top_k, use_sampling=True) -> codes [B, K, T]``:
#: the library's own sampler with guidance 3 (``torch.manual_seed(seed)`` first).
plain_generate = _per_backend({"audiocraft": _audiocraft_generate,
                               "transformers": _transformers_generate})


#: ``library_special_token(model) -> int``: the id that fills the delay pattern, as the library
#: itself records it (audiocraft ``lm.special_token_id``; transformers ``config.pad_token_id``).
library_special_token = _per_backend({
    "audiocraft": lambda model: int(model.musicgen.lm.special_token_id),
    "transformers": lambda model: int(model.backend.decoder.config.pad_token_id),
})


@pytest.fixture(scope="session")
def exported_testbed(tmp_path_factory: pytest.TempPathFactory):
    """The testbed written by ``python -m mstools export --format transformers`` (once per session)."""
    from mstools.apps.export import export_transformers
    return export_transformers(tmp_path_factory.mktemp("export") / "testbed-hf", check=False)
