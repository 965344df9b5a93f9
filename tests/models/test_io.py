"""load_policy / save_policy: bit-exact round trip, plain transformers loading, refusals with the fix."""

import json

import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from cascade_rl.cli import main as cli_main
from cascade_rl.models import CheckpointError, build_tiny_tokenizer, load_policy, save_policy
from cascade_rl.models.io import load_processor, policy_parameter_names


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_round_trip_is_bit_exact(tiny_internvl, tiny_checkpoint):
    model, processor = tiny_internvl
    loaded, loaded_processor = load_policy(tiny_checkpoint)
    assert_same_weights(model, loaded)
    assert loaded_processor.image_seq_length == processor.image_seq_length
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_processor.chat_template == processor.chat_template
    assert loaded_processor.image_processor.max_patches == processor.image_processor.max_patches


def test_checkpoint_is_plain_transformers(tiny_internvl, tiny_checkpoint):
    model, processor = tiny_internvl
    assert_same_weights(model, AutoModelForImageTextToText.from_pretrained(tiny_checkpoint))
    assert AutoTokenizer.from_pretrained(tiny_checkpoint).context_image_token == "<IMG_CONTEXT>"
    assert AutoImageProcessor.from_pretrained(tiny_checkpoint).size["height"] == 64
    with open(tiny_checkpoint / "processor_config.json") as f:
        assert json.load(f)["processor_class"] == "InternVLProcessor"
    assert not list(tiny_checkpoint.glob("*.bin"))


def test_processor_files_are_a_complete_internvl_processor(tiny_checkpoint):
    """What `AutoProcessor` reads (loaded for real in tests/vllm_cpu, where torchvision is): the class, the image and
    video processor entries, the chat template."""
    config = json.loads((tiny_checkpoint / "processor_config.json").read_text())
    assert config["processor_class"] == "InternVLProcessor" and config["image_seq_length"] == 16
    image, video = config["image_processor"], config["video_processor"]
    assert video["video_processor_type"] == "InternVLVideoProcessor"
    for key in ("size", "image_mean", "image_std", "rescale_factor", "resample"):
        assert video[key] == image[key], key  # frames are processed like images
    assert (tiny_checkpoint / "chat_template.jinja").read_text().startswith("{%")


def test_save_in_bfloat16_records_the_dtype(tiny_internvl, tmp_path):
    model, processor = tiny_internvl
    save_policy(model, processor, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded, _ = load_policy(tmp_path, dtype="auto")
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_pickle_weights_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(CheckpointError, match="pickle.*safetensors"):
        load_policy(tmp_path)


def test_github_format_internvl_is_refused_with_the_conversion(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(CheckpointError, match="internvl_custom2hf"):
        load_policy(tmp_path)


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_policy(tmp_path / "nowhere")


def test_causal_lm_loads_with_its_tokenizer(tmp_path):
    tokenizer = build_tiny_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
    )
    model = Qwen3ForCausalLM(config)
    save_policy(model, tokenizer, tmp_path)
    loaded, loaded_tokenizer = load_policy(tmp_path)
    assert isinstance(loaded, Qwen3ForCausalLM)
    assert_same_weights(model, loaded)
    assert loaded_tokenizer.eos_token == "<|im_end|>"
    assert policy_parameter_names(tmp_path) == {n for n, _ in loaded.named_parameters()}
    assert load_processor(tmp_path).eos_token == "<|im_end|>"


def test_parameter_names_and_processor_without_the_weights(tiny_checkpoint):
    loaded, processor = load_policy(tiny_checkpoint)
    # The safetensors files keep transformers' older key layout (language_model.model.*); the names a trainer sends
    # are the loaded model's (model.language_model.*), which is what the meta-device build gives.
    assert policy_parameter_names(tiny_checkpoint) == {n for n, _ in loaded.named_parameters()}
    assert load_processor(tiny_checkpoint).tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_cli_init_tiny_writes_a_loadable_checkpoint(tmp_path, tiny_internvl):
    assert cli_main(["init-tiny", str(tmp_path / "tiny")]) == 0
    loaded, _ = load_policy(tmp_path / "tiny")
    assert_same_weights(tiny_internvl[0], loaded)  # same preset and seed: same weights
