"""Hook overhead during generation: the library's plain generate vs HookedMusicGen.

    python benchmarks/hook_overhead.py [--scale small] [--backend audiocraft|transformers]
                                       [--seconds 2] [--repeats 3] [--threads 2]

Arms (interleaved, same seed, same model object):
  plain      the library's own generate: audiocraft's ``MusicGen.generate``, or transformers'
             ``MusicgenForConditionalGeneration.generate`` (both return decoded audio)
  hooked     ``HookedMusicGen.generate`` with no hooks        (target <= 1.02x)
  identity   one identity hook on every ``resid_post``        (target <= 1.05x)
  cache      caching every ``resid_post`` step by step        (target <= 1.15x)
Results: benchmarks/results/hook_overhead_<scale>[_transformers].json and a markdown table.
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
    ap.add_argument("--backend", default="audiocraft", choices=["audiocraft", "transformers"])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    model = load_model(args.scale, args.backend)
    prompts = ["jazz"]
    top_k = min(250, model.card)
    if args.backend == "audiocraft":
        mg = model.musicgen

        def plain():
            mg.set_generation_params(duration=args.seconds, top_k=top_k)
            torch.manual_seed(0)
            return mg.generate(prompts)
    else:
        if model.backend.composite is None:
            raise SystemExit("the transformers plain arm needs a MusicgenForConditionalGeneration "
                             "(a random build, not the testbed)")
        hf, tok = model.backend.composite, model.backend.text.tokenizer
        inputs = tok(prompts, return_tensors="pt", padding=True)
        new_tokens = int(args.seconds * model.frame_rate) + model.num_codebooks - 1

        def plain():
            torch.manual_seed(0)
            return hf.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=top_k,
                               max_new_tokens=new_tokens)

    def hooked():
        return model.generate(prompts, duration=args.seconds, seed=0, top_k=top_k).audio

    def identity():
        return model.generate(prompts, duration=args.seconds, seed=0, top_k=top_k,
                              fwd_hooks=[("blocks.*.hook_resid_post", lambda x, hook: x)]).audio

    def cache():
        return model.generate(prompts, duration=args.seconds, seed=0, top_k=top_k,
                              cache="blocks.*.hook_resid_post").audio

    ref = plain()
    assert torch.equal(hooked(), ref) and torch.equal(identity(), ref), "outputs must match exactly"
    times = interleaved({"plain": plain, "hooked": hooked, "identity": identity, "cache": cache},
                        repeats=args.repeats)
    rows = summary(times, "plain")
    steps = int(args.seconds * model.frame_rate) + model.num_codebooks - 1
    payload = {"scale": args.scale, "backend": args.backend, "seconds_of_audio": args.seconds,
               "steps": steps,
               "results": rows, "targets": {"hooked": 1.02, "identity": 1.05, "cache": 1.15}}
    suffix = "" if args.backend == "audiocraft" else f"_{args.backend}"
    path = write(f"hook_overhead_{args.scale}{suffix}", payload)
    print(f"## hook overhead, {args.backend}, {args.scale}, {args.seconds:g} s of audio, "
          f"{args.threads} threads\n")
    print(table(rows, "plain"))
    print(f"\nwritten to {path}")
    return payload


if __name__ == "__main__":
    main()
