"""The in-process tokenizer: deterministic, InternVL special tokens are single ids."""

import torch

from cascade_rl.models import TINY_PRESETS, build_tiny_internvl, build_tiny_tokenizer
from cascade_rl.models.tiny import vision_language_parameter_counts
from cascade_rl.models.tokenizer import INTERNVL_SPECIAL_TOKENS


def test_two_builds_are_identical():
    assert build_tiny_tokenizer().get_vocab() == build_tiny_tokenizer().get_vocab()


def test_special_tokens_are_single_ids():
    tokenizer = build_tiny_tokenizer()
    for token in INTERNVL_SPECIAL_TOKENS + ["<|im_start|>", "<|im_end|>"]:
        ids = tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids and len(ids) == 3, token
    assert tokenizer.decode(tokenizer("Answer: \\boxed{3/4}")["input_ids"]) == "Answer: \\boxed{3/4}"


def test_realistic_preset_keeps_internvl3_5_1b_proportions():
    # InternVL3.5-1B: 0.3B vision (InternViT-300M + projector) to 0.8B language, i.e. about 1 : 2 to 1 : 3.
    vision, language = vision_language_parameter_counts(build_tiny_internvl("internvl3_5_1b_ratio")[0])
    assert 0.4 <= vision / language <= 0.6
    assert TINY_PRESETS["internvl3_5_1b_ratio"].tokens_per_tile == 16


def test_vision_position_embeddings_are_drawn_not_zero():
    # transformers starts them at zero; the tiny builder draws N(0, 0.5²) so patches know where they are.
    first = build_tiny_internvl("tiny", seed=0)[0].model.vision_tower.embeddings.position_embeddings
    again = build_tiny_internvl("tiny", seed=0)[0].model.vision_tower.embeddings.position_embeddings
    assert 0.4 < float(first.std()) < 0.6
    assert torch.equal(first, again)
