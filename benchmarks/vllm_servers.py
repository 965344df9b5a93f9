"""Dedicated rollout servers: `vllm serve` (what `cascade-rl serve --engine vllm` starts) against the previous server
(our HTTP server around a vLLM engine, one lock around generate), N concurrent trainer-side clients, one run.

Same checkpoint (the `internvl3_5_1b_ratio` tiny InternVL, head_dim 32, fp32), same image prompts, same sampling
(n samples at temperature 1, a token budget a random model runs to). `--clients` threads stand for trainer ranks:
each sends its share of the prompts through its own client at the same time. The servers run one after the other
(never side by side on the same cores); each takes one warm-up round, then `--repeats` timed rounds. Figure: rollouts
per second over the timed rounds; the ratio is vllm serve / previous server. Runs in the vLLM env:
`make bench-vllm`. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from vllm_vs_hf import requests

from cascade_rl.models import TINY_PRESETS, build_tiny_internvl, load_policy, save_policy
from cascade_rl.rollout import SamplingParams
from cascade_rl.rollout.client import ServerEngine
from cascade_rl.rollout.vllm_launch import ServeSettings, serve_command
from cascade_rl.rollout.vllm_server import VLLMServerEngine

KV_CACHE_GIB = 0.5
PREVIOUS_SERVER = """
import sys
from cascade_rl.models.io import load_processor, policy_parameter_names
from cascade_rl.rollout.server import RolloutServer
from cascade_rl.rollout.vllm import VLLMEngine
from cascade_rl.rollout.vllm_support import VLLMSettings
path, port = sys.argv[1], int(sys.argv[2])
settings = VLLMSettings(dtype="float32", kv_cache_gib={kv}, enforce_eager=True, max_model_len=2048, sleep=False)
engine = VLLMEngine(path, load_processor(path), max_tiles=4, settings=settings)
RolloutServer(engine, param_names=policy_parameter_names(path), port=port).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, checkpoint: Path, port: int) -> subprocess.Popen:
    if kind == "previous":
        argv = [sys.executable, "-c", PREVIOUS_SERVER.format(kv=KV_CACHE_GIB), str(checkpoint), str(port)]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = ServeSettings(
        str(checkpoint), port=port, max_tiles=4, dtype="float32", kv_cache_gib=KV_CACHE_GIB, enforce_eager=True
    )
    argv, env = serve_command(replace(settings, max_model_len=2048))
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def client(kind: str, url: str, processor):
    if kind == "previous":
        return ServerEngine(url, timeout_s=600)
    return VLLMServerEngine([url], processor, timeout_s=600)


def round_trip(clients, shares, n, sampling) -> tuple[float, int]:
    """All clients at once, each with its share; (seconds, rollouts)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(c.generate, share, n=n, sampling=sampling) for c, share in zip(clients, shares)]
        count = sum(len(f.result()) for f in futures)
    return time.perf_counter() - started, count


def measure(kind, checkpoint, processor, args) -> float:
    port = free_port()
    process = start(kind, checkpoint, port)
    try:
        clients = [client(kind, f"http://127.0.0.1:{port}", processor) for _ in range(args.clients)]
        clients[0].wait_until_ready(900)
        prompts = requests(args.prompts)
        shares = [prompts[i :: args.clients] for i in range(args.clients)]
        sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
        round_trip(clients, shares, args.n, sampling)  # warm-up
        timed = [round_trip(clients, shares, args.n, sampling) for _ in range(args.repeats)]
        rate = sum(c for _, c in timed) / sum(s for s, _ in timed)
        print(f"{kind:>12}: {rate:8.2f} rollouts/s ({args.clients} clients, {args.prompts} prompts × {args.n})")
        return rate
    finally:
        process.terminate()
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec = replace(TINY_PRESETS["internvl3_5_1b_ratio"], max_tiles=4)
    with tempfile.TemporaryDirectory() as root:
        checkpoint = save_policy(*build_tiny_internvl(spec, seed=0), Path(root) / "checkpoint")
        processor = load_policy(checkpoint)[1]
        rates = {kind: measure(kind, checkpoint, processor, args) for kind in ("previous", "vllm_serve")}
    ratio = rates["vllm_serve"] / rates["previous"]
    print(f"vllm serve / previous server: {ratio:.2f}x")
    print(json.dumps({"rollouts_per_s": rates, "ratio": round(ratio, 3), "clients": args.clients}))


if __name__ == "__main__":
    main()
