"""Hook overhead during generation: plain audiocraft vs HookedMusicGen (no hooks, identity hooks).

    python benchmarks/hook_overhead.py [--scale small] [--seconds 2] [--repeats 3] [--threads 2]

Arms (interleaved, same seed, same model object):
  plain      audiocraft's own ``MusicGen.generate``
  hooked     ``HookedMusicGen.generate`` with no hooks        (target <= 1.02x)
  identity   one identity hook on every ``resid_post``        (target <= 1.05x)
  cache      caching every ``resid_post`` step by step        (target <= 1.15x)
Results: benchmarks/results/hook_overhead_<scale>.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, pin_threads, summary, table, write  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small", help="tiny|small|medium|large, or 'testbed'")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    import mstools
    model = (mstools.load_musicgen("testbed", device="cpu") if args.scale == "testbed"
             else mstools.build_musicgen(args.scale, seed=0))
    mg = model.musicgen
    prompts = ["jazz"]
    top_k = min(250, model.card)

    def plain():
        mg.set_generation_params(duration=args.seconds, top_k=top_k)
        torch.manual_seed(0)
        return mg.generate(prompts, return_tokens=True)[1]

    def hooked():
        return model.generate(prompts, duration=args.seconds, seed=0, top_k=top_k).codes

    def identity():
        return model.generate(prompts, duration=args.seconds, seed=0, top_k=top_k,
                              fwd_hooks=[("blocks.*.hook_resid_post", lambda x, hook: x)]).codes

    def cache():
        return model.generate(prompts, duration=args.seconds, seed=0, top_k=top_k,
                              cache="blocks.*.hook_resid_post").codes

    ref = plain()
    assert torch.equal(hooked(), ref) and torch.equal(identity(), ref), "outputs must match exactly"
    times = interleaved({"plain": plain, "hooked": hooked, "identity": identity, "cache": cache},
                        repeats=args.repeats)
    rows = summary(times, "plain")
    payload = {"scale": args.scale, "seconds_of_audio": args.seconds, "steps": ref.shape[-1] + 3,
               "results": rows, "targets": {"hooked": 1.02, "identity": 1.05, "cache": 1.15}}
    path = write(f"hook_overhead_{args.scale}", payload)
    print(f"## hook overhead, {args.scale}, {args.seconds:g} s of audio, {args.threads} threads\n")
    print(table(rows, "plain"))
    print(f"\nwritten to {path}")
    return payload


if __name__ == "__main__":
    main()
