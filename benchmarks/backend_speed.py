"""The same MusicGen on both backends, side by side: generation and teacher forcing.

    python benchmarks/backend_speed.py [--scale small|testbed] [--seconds 2] [--repeats 3] [--threads 2]

One set of weights: audiocraft's model (a random build at ``--scale``, or the testbed), and the same
weights mapped into transformers' ``MusicgenForCausalLM`` (``mstools.model.backends.convert``), each
wrapped by ``HookedMusicGen``. Arms (interleaved, same seed):
  audiocraft_generate / transformers_generate      generate ``--seconds`` of audio, no hooks
  audiocraft_steered / transformers_steered        the same with a steering vector on one layer
  audiocraft_forward / transformers_forward        teacher-forced logits of 4 clips of that length
Ratios are against ``audiocraft_generate`` (generate arms) and ``audiocraft_forward``.
Results: benchmarks/results/backend_speed_<scale>.json and markdown tables on stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, pin_threads, summary, table, write  # noqa: E402
from common import model as load_model  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small", help="tiny|small|medium|large, or 'testbed'")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    from mstools.model.backends.transformers_backend import backend_from_audiocraft
    from mstools.model.hooked import HookedMusicGen
    from mstools.steering import SteeringVector, apply
    ac = load_model(args.scale)
    if args.scale == "testbed":  # the testbed's transformers form: the exported composite
        from mstools.model.loading import testbed_on_transformers
        hf = HookedMusicGen(testbed_on_transformers(ac.musicgen), name=ac.model_name)
    else:
        hf = HookedMusicGen(backend_from_audiocraft(ac.musicgen), name=ac.model_name)
    assert hf.fingerprint == ac.fingerprint
    if hasattr(ac, "reference_clips"):  # the testbed's clips for activation norms
        hf.reference_clips = ac.reference_clips
    prompts = ["jazz"] if args.scale != "testbed" else ["fast rock with brass"]
    top_k = min(250, ac.card)
    layer = ac.num_layers // 2
    vec = SteeringVector({f"blocks.{layer}.hook_resid_post": torch.randn(
        ac.d_model, generator=torch.Generator().manual_seed(0))}, ac.fingerprint, source="random")
    frames = int(args.seconds * ac.frame_rate)
    codes = torch.randint(0, ac.card, (4, ac.num_codebooks, frames),
                          generator=torch.Generator().manual_seed(1))

    def gen(model):
        return lambda: model.generate(prompts, args.seconds, seed=0, top_k=top_k, decode=False).codes

    def steered(model):
        def run():
            with apply(vec, model, strength=1.0):
                return model.generate(prompts, args.seconds, seed=0, top_k=top_k, decode=False).codes
        return run

    def forward(model):
        return lambda: model(codes, prompts * 4)

    same = torch.equal(gen(ac)(), gen(hf)())
    logit_diff = float((forward(ac)() - forward(hf)()).abs().max())
    g_times = interleaved({"audiocraft_generate": gen(ac), "transformers_generate": gen(hf),
                           "audiocraft_steered": steered(ac), "transformers_steered": steered(hf)},
                          repeats=args.repeats)
    f_times = interleaved({"audiocraft_forward": forward(ac), "transformers_forward": forward(hf)},
                          repeats=args.repeats)
    g_rows, f_rows = summary(g_times, "audiocraft_generate"), summary(f_times, "audiocraft_forward")
    payload = {"scale": args.scale, "seconds_of_audio": args.seconds, "frames": frames,
               "same_sampled_codes": same, "max_abs_logit_diff": logit_diff,
               "generate": g_rows, "forward": f_rows}
    path = write(f"backend_speed_{args.scale}", payload)
    print(f"## backends side by side, {args.scale}, {args.seconds:g} s of audio, {args.threads} threads")
    print(f"same sampled codes: {same}; max |logit diff| {logit_diff:.2e}\n")
    print(table(g_rows, "audiocraft_generate"))
    print()
    print(table(f_rows, "audiocraft_forward"))
    print(f"\nwritten to {path}")
    return payload


if __name__ == "__main__":
    main()
