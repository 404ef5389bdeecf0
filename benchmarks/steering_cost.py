"""Steering cost: one vector on one layer vs none (musicgen-small size), and a batched sweep vs
separate generates (testbed).

    python benchmarks/steering_cost.py [--scale small] [--sweep-model testbed] [--repeats 3]

Part 1 (target <= 1.05x): generate ``--seconds`` of audio with no steering vs one steering vector on
``blocks.{L/2}.hook_resid_post`` (add operator, constant schedule, cond branch), same seed, interleaved.
Part 2 (target >= 3x faster): 8 steering settings (strengths) x 4 prompts as one batched generate
(``mstools.steering.sweep``) vs 8 separate generates of 4 prompts each.
Results: benchmarks/results/steering_cost.json and markdown tables on stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, pin_threads, summary, table, write  # noqa: E402
from common import model as _model  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--sweep-model", default="testbed")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sweep-seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    from mstools.steering import Steering, SteeringVector, apply, sweep

    model = _model(args.scale)
    hook = f"blocks.{model.num_layers // 2}.hook_resid_post"
    vec = SteeringVector({hook: torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))},
                         model.fingerprint, source="random")
    top_k = min(250, model.card)

    def plain():
        return model.generate(["jazz"], duration=args.seconds, seed=0, top_k=top_k).codes

    def steered():
        with apply(vec, model, strength=1.0):
            return model.generate(["jazz"], duration=args.seconds, seed=0, top_k=top_k).codes

    one = summary(interleaved({"none": plain, "one_vector": steered}, repeats=args.repeats), "none")
    print(f"## one steering vector on {hook}, {args.scale}, {args.seconds:g} s\n")
    print(table(one, "none"))

    sm = _model(args.sweep_model)
    shook = f"blocks.{sm.num_layers // 2}.hook_resid_post"
    svec = SteeringVector({shook: torch.randn(sm.d_model, generator=torch.Generator().manual_seed(1))},
                          sm.fingerprint, source="random")
    prompts = ["rock", "jazz", "classical", "electronic"]
    strengths = [0.25 * i for i in range(8)]
    settings = [Steering(svec, s) for s in strengths]

    def batched():
        return sweep(sm, prompts, settings, args.sweep_seconds, seed=0, decode=False)

    def separate():
        outs = []
        for s in strengths:
            with apply(svec, sm, strength=s):
                outs.append(sm.generate(prompts, args.sweep_seconds, seed=0, decode=False))
        return outs

    sw = summary(interleaved({"separate_8": separate, "batched_8": batched}, repeats=args.repeats),
                 "separate_8")
    speedup = sw["separate_8"]["median_s"] / sw["batched_8"]["median_s"]
    print(f"\n## sweep of 8 settings x 4 prompts, {args.sweep_model}, {args.sweep_seconds:g} s\n")
    print(table(sw, "separate_8"))
    print(f"\nbatched speed-up: {speedup:.2f}x (target >= 3x)")
    payload = {"one_vector": {"scale": args.scale, "hook": hook, "results": one, "target": 1.05},
               "sweep": {"model": args.sweep_model, "results": sw, "speedup": speedup, "target": 3.0}}
    print(f"written to {write('steering_cost', payload)}")
    return payload


if __name__ == "__main__":
    main()
