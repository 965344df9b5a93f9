"""`cascade-rl serve --engine vllm` on a GPU: rollouts over HTTP, weights over HTTP or NCCL (the server on a second
GPU: NCCL joins two processes on two devices)."""

import importlib.util
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(checkpoint, devices: str):
    port = free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices}
    args = ["serve", "--model", str(checkpoint), "--engine", "vllm", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "cascade_rl.cli", *args, "--gpu-memory-utilization", "0.3"], env=env
    )
    return process, f"http://127.0.0.1:{port}"


def greedy_after_push(checkpoint, devices: str, transport: str):
    from synthetic import shapes_image

    from cascade_rl.models import build_tiny_internvl
    from cascade_rl.rollout import RolloutRequest, SamplingParams
    from cascade_rl.rollout.client import ServerEngine

    process, url = serve(checkpoint, devices)
    try:
        client = ServerEngine(url, timeout_s=120, weight_transport=transport)
        client.wait_until_ready(timeout_s=600)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
        request = [RolloutRequest("a", messages, [shapes_image(128, 64)])]
        greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
        before = client.generate(request, n=1, sampling=greedy)[0].token_ids
        other = build_tiny_internvl("tiny", seed=5)[0].to("cuda" if transport == "nccl" else "cpu")
        started = time.monotonic()
        client.update_weights(other)
        assert client.health()["weights_version"] == 1
        after = client.generate(request, n=1, sampling=greedy)[0].token_ids
        return before, after, time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_vllm_server_takes_weights_over_http(tiny_checkpoint):
    before, after, _ = greedy_after_push(tiny_checkpoint, "0", "http")
    assert before != after  # other weights, other greedy completion


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs the server on a second GPU")
def test_vllm_server_takes_weights_over_nccl(tiny_checkpoint):
    before, after, _ = greedy_after_push(tiny_checkpoint, "1", "nccl")
    assert before != after
