"""`cascade-rl serve --engine vllm` on GPUs: vLLM's own server, weights from a CUDA trainer over vLLM's NCCL weight
transfer (the server on a second GPU: NCCL joins two processes on two devices)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs the server on a second GPU"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_server_takes_weights_over_nccl(tmp_path):
    from synthetic import shapes_image

    from cascade_rl.models import build_tiny_internvl, load_policy, save_policy
    from cascade_rl.rollout import RolloutRequest, SamplingParams
    from cascade_rl.rollout.vllm_server import VLLMServerEngine

    hd32_checkpoint = save_policy(*build_tiny_internvl("tiny_hd32", seed=0), tmp_path / "hd32")
    port = free_port()
    args = ["serve", "--model", str(hd32_checkpoint), "--port", str(port), "--gpu-memory-utilization", "0.3"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cascade_rl.cli", *args], env=env)
    try:
        _, processor = load_policy(hd32_checkpoint)
        client = VLLMServerEngine([f"http://127.0.0.1:{port}"], processor, timeout_s=120, weight_backend="nccl")
        client.wait_until_ready(600)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
        request = [RolloutRequest("a", messages, [shapes_image(128, 64)])]
        greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
        before = client.generate(request, n=1, sampling=greedy)[0].token_ids
        other = build_tiny_internvl("tiny_hd32", seed=5)[0].to("cuda:0")
        client.update_weights(other)
        after = client.generate(request, n=1, sampling=greedy)[0].token_ids
        assert before != after  # other weights, other greedy completion
    finally:
        process.terminate()
        process.wait(timeout=60)
