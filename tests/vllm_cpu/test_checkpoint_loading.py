"""Checkpoints that `save_policy` writes load in plain transformers (`AutoProcessor`, `AutoModelForImageTextToText`)
and generate; here because `InternVLProcessor`'s video slot needs torchvision, which `make test`'s env lacks."""

import json

import pytest
import torch
from synthetic import shapes_image
from transformers import AutoModelForImageTextToText, AutoProcessor

from cascade_rl.models import encode_prompt, load_policy, save_policy
from cascade_rl.models.processor import torchvision_available
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]


def test_this_env_has_a_working_torchvision():
    assert torchvision_available()


def test_plain_transformers_loads_and_generates(hd32_internvl, hd32_checkpoint):
    model, processor = hd32_internvl
    auto_processor = AutoProcessor.from_pretrained(hd32_checkpoint)
    assert type(auto_processor).__name__ == "InternVLProcessor"
    assert auto_processor.video_processor.size == {"height": 64, "width": 64}
    auto_model = AutoModelForImageTextToText.from_pretrained(hd32_checkpoint).eval()
    image = shapes_image(128, 64, seed=1)
    text = auto_processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = auto_processor(images=[image], text=[text], return_tensors="pt", max_patches=4)
    ours = encode_prompt(processor, QUESTION, [image], max_tiles=4)
    assert inputs["input_ids"][0].tolist() == ours.input_ids.tolist()  # same template, tiling and image tokens
    torch.testing.assert_close(inputs["pixel_values"], ours.pixel_values)
    suppress = [[i] for i in processor.image_token_ids]
    generated = auto_model.generate(**inputs, max_new_tokens=6, do_sample=False, bad_words_ids=suppress)
    request = RolloutRequest("a", QUESTION, [image])
    greedy = HFEngine(model, processor, max_tiles=4).generate([request], n=1, sampling=SamplingParams(0.0, 1, -1, 6))
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == greedy[0].token_ids


def test_bfloat16_checkpoint_for_serving(hd32_internvl, tmp_path):
    model, processor = hd32_internvl
    save_policy(model, processor, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16
    reference = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, reference[name].to(torch.bfloat16), atol=0, rtol=0)
    assert type(load_policy(tmp_path)[1]).__name__ == "InternVLProcessor"  # the plain processor where it loads
