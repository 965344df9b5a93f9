"""What the vLLM-server client sends per prompt: the system turn, the images, and the prompt's per-image tile budget
(vLLM's per-request `mm_processor_kwargs`, the keys the colocated engine passes; tests/vllm_cpu checks vLLM tiles
by them like the trainer)."""

import json

from synthetic import shapes_image

from cascade_rl.data import PromptRow
from cascade_rl.rollout import RolloutRequest, SamplingParams
from cascade_rl.rollout.http import ServerCalls
from cascade_rl.rollout.vllm_launch import ServeSettings, serve_command
from cascade_rl.rollout.vllm_server import VLLMServerEngine


class RecordingServer(ServerCalls):
    """Answers /v1/models and /v1/chat/completions like a vLLM server (each sample: just `<|im_end|>`)."""

    def __init__(self, eos_id: int):
        super().__init__("http://127.0.0.1:1", timeout_s=1.0, retries=1, backoff_s=0.0)
        self.eos_id, self.bodies = eos_id, []

    def call(self, method, route, body=None, **_):
        return {"data": [{"id": "policy"}]}

    def post(self, route, body=None, **_):
        self.bodies.append(body)
        sample = {"index": 0, "token_ids": [self.eos_id], "finish_reason": "stop"}
        return {"choices": [{**sample, "logprobs": {"content": [{"logprob": -0.5}]}}]}


def sent_bodies(processor, requests, *, max_tiles: int) -> list[dict]:
    """The bodies sent for `requests`, in request order (the client sends them concurrently)."""
    engine = VLLMServerEngine(["http://127.0.0.1:1"], processor, max_tiles=max_tiles)
    server = RecordingServer(processor.tokenizer.eos_token_id)
    engine.servers = [server]
    engine.generate(requests, n=1, sampling=SamplingParams(temperature=1.0, max_new_tokens=4))
    by_images = {image_parts(body): body for body in server.bodies}
    return [by_images[len(r.images)] for r in requests]


def image_parts(body: dict) -> int:
    return sum(part["type"] == "image_url" for m in body["messages"] for part in m["content"])


def request(n_images: int, system: str | None = None) -> RolloutRequest:
    row = PromptRow(id=f"p{n_images}", question="Which image has more squares?", images=["x"] * n_images)
    return RolloutRequest(row.id, row.to_messages(system), [shapes_image(64, 64, seed=k) for k in range(n_images)])


def test_each_request_carries_its_per_image_tile_budget(tiny_internvl):
    processor = tiny_internvl[1]
    two, one, none = sent_bodies(processor, [request(2), request(1), request(0)], max_tiles=12)
    # max(1, 12 // 2) = 6 tiles per image; one image keeps all 12; a text-only prompt sends no tiling at all
    assert two["mm_processor_kwargs"] == {"crop_to_patches": True, "max_patches": 6}
    assert one["mm_processor_kwargs"] == {"crop_to_patches": True, "max_patches": 12}
    assert "mm_processor_kwargs" not in none
    (five,) = sent_bodies(processor, [request(5)], max_tiles=4)
    assert five["mm_processor_kwargs"]["max_patches"] == 1  # max(1, 4 // 5)
    assert [part["type"] for part in five["messages"][0]["content"]] == ["image_url"] * 5 + ["text"]


def test_the_system_turn_goes_first_as_given(tiny_internvl):
    (body,) = sent_bodies(tiny_internvl[1], [request(1, system="Count carefully.")], max_tiles=12)
    assert body["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Count carefully."}]}
    assert body["messages"][1]["role"] == "user"


def test_served_vision_models_take_the_budget_per_request(tiny_checkpoint):
    argv, _ = serve_command(ServeSettings(model=str(tiny_checkpoint), max_tiles=12))
    # vLLM refuses per-request mm_processor_kwargs unless the server trusts them
    assert "--trust-request-mm-kwargs" in argv
    assert json.loads(argv[argv.index("--mm-processor-kwargs") + 1]) == {"crop_to_patches": True, "max_patches": 12}
