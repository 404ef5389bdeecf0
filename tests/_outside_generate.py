"""Run in a subprocess with no mstools import: code written for ``facebook/musicgen-small``, pointed at
the exported testbed folder.

    python tests/_outside_generate.py FOLDER OUT.pt '<json args>'

args: ``prompts``, ``seed``, ``max_new_tokens``, and optionally ``steer``:
``{"layers": [...], "vectors": {layer: [D floats]}, "strength": a, "freq": 25, "offset": 0}`` (the
released hook, ``_seed_reference.SeedHooks``). Writes ``{"codes": [B, K, T], "audio": [B, 1, N],
"encoded": [B, K, T] (audio_encoder.encode of the audio), "sampling_rate", "mstools_imported"}``.
"""
import json
import sys

import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _seed_reference import SeedHooks, generate_codes  # noqa: E402


def main() -> None:
    folder, out, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(folder)
    model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
    steer = args.get("steer")
    hooks = None
    if steer:
        vectors = {int(k): torch.tensor(v) for k, v in steer["vectors"].items()}
        hooks = SeedHooks(vectors, {i: steer["strength"] for i in vectors}, steer.get("freq", 25),
                          steer.get("offset", 0))
    if hooks is None:
        codes = generate_codes(model, processor, args["prompts"], args["max_new_tokens"], args["seed"])
    else:
        with hooks.attach(model):
            codes = generate_codes(model, processor, args["prompts"], args["max_new_tokens"], args["seed"])
    with torch.no_grad():
        audio = model.audio_encoder.decode(codes[None], [None] * codes.shape[0]).audio_values
        encoded = model.audio_encoder.encode(audio).audio_codes[0]
    torch.save({"codes": codes, "audio": audio, "encoded": encoded,
                "sampling_rate": model.config.audio_encoder.sampling_rate,
                "steered_calls": hooks.steered if hooks else [],
                "mstools_imported": any(m == "mstools" or m.startswith("mstools.") for m in sys.modules)},
               out)


if __name__ == "__main__":
    main()
