"""Fixture and cost model of benchmarks/gspo_vs_trl.py: a tiny image-heavy InternVL, fixed rollouts, MAC counts.

The fixture is written once by the parent process and read by both sides, so they train the same checkpoint on the
same prompts, images, completion token ids and rewards.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

# Image sizes cycled over the prompts: with 128-px tiles and at most 4 crops they tile into 2 + 1, 3 + 1 and
# 4 + 1 tiles (crops + InternVL's thumbnail), i.e. 192, 256 and 320 image tokens of 64 each.
IMAGE_SIZES = [(256, 128), (384, 128), (256, 256)]
SPECIAL_IDS = 13  # ids 0..12 are the tiny tokenizer's special tokens (pad, eos, <IMG_CONTEXT>, ...)


def benchmark_spec(max_tiles: int):
    """The `internvl3_5_1b_ratio` sizes (vision : LLM parameters ≈ 1 : 2) with 128-px tiles of 64 image tokens."""
    from cascade_rl.models import TINY_PRESETS

    return replace(TINY_PRESETS["internvl3_5_1b_ratio"], tile_size=128, patch_size=8, max_tiles=max_tiles)


def write_fixture(root: Path, *, prompts: int, group: int, min_len: int, max_len: int, max_tiles: int) -> dict:
    """Checkpoint, images, prompts.jsonl and rollouts.json (per prompt: G completions and G rewards) under `root`."""
    from cascade_rl.models import build_tiny_internvl, save_policy

    model, processor = build_tiny_internvl(benchmark_spec(max_tiles), seed=0)
    save_policy(model, processor, root / "checkpoint")
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    eos = processor.tokenizer.eos_token_id
    vocab = len(processor.tokenizer)
    rows, rollouts = [], {}
    for i in range(prompts):
        width, height = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / "images" / f"{i}.png")
        pid = f"p{i}"
        rows.append({"id": pid, "image": f"{i}.png", "question": f"Prompt {i}: how many squares are there?"})
        lengths = [rng.randint(min_len, max_len) for _ in range(group)]
        completions = [[rng.randrange(SPECIAL_IDS, vocab) for _ in range(n - 1)] + [eos] for n in lengths]
        rewards = [round(rng.random(), 3) for _ in range(group)]
        rollouts[pid] = {"completions": completions, "rewards": rewards}
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "rollouts.json").write_text(json.dumps(rollouts))
    return rollouts


def read_rollouts(root: Path) -> dict:
    return json.loads((root / "rollouts.json").read_text())


class CostModel:
    """Forward multiply-accumulates (MACs) of the pieces of one InternVL forward, read off the model config.

    LLM: every linear layer per token, causal attention as 2 · heads · head_dim MACs per layer per query-key pair,
    the LM head (D · V) per scored position. Vision tower per tile: patch embedding, encoder linear layers and
    attention over its (tile / patch)² + 1 tokens. Projector per image token: 4·C_vision · D + D · D.
    """

    def __init__(self, config):
        text, vision = config.text_config, config.vision_config
        d, heads, kv, hd = text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim
        self.layers = text.num_hidden_layers
        self.linear = self.layers * (2 * d * heads * hd + 2 * d * kv * hd + 3 * d * text.intermediate_size)
        self.pair = self.layers * 2 * heads * hd
        self.head = d * text.vocab_size
        size, patch = _side(vision.image_size), _side(vision.patch_size)
        patches = (size // patch) ** 2
        cv, tokens = vision.hidden_size, patches + 1
        per_layer = tokens * (4 * cv * cv + 2 * cv * vision.intermediate_size) + tokens * tokens * 2 * cv
        self.vision = patches * 3 * patch**2 * cv + vision.num_hidden_layers * per_layer
        self.projector = config.image_seq_length * (4 * cv * d + d * d)

    def llm(self, new: int, past: int = 0, scored: int = 0) -> float:
        """`new` tokens after `past` cached ones, LM head on `scored` positions."""
        pairs = new * past + new * (new + 1) / 2
        return new * self.linear + pairs * self.pair + scored * self.head


def _side(size) -> int:
    """InternVL vision configs store sizes as [h, w]; tiles are square."""
    return size[0] if isinstance(size, (list, tuple)) else size


def step_macs(cost: CostModel, groups: list[dict], *, padded: bool) -> tuple[float, float]:
    """(ours, TRL) MACs of one training step over `groups` ({"prompt": P, "tiles": n, "completions": [c_k]}).

    Backward = 2 × forward wherever the gradient flows (projector, LLM, LM head); the frozen vision tower runs
    forward only. ours per group: vision tower + projector once (cache), then old pass and fwd+bwd pass each with
    the projector, the prompt once and G completions after its cached keys/values (padded to the group's longest).
    TRL per completion: old pass and fwd+bwd pass each with vision tower, projector and the full prompt+completion
    row; `padded` pads every row to the generation batch's longest prompt and completion, as TRL runs it.
    """
    p_max = max(g["prompt"] for g in groups)
    c_max = max(max(g["completions"]) for g in groups)
    ours = trl = 0.0
    for g in groups:
        vision, projector = g["tiles"] * cost.vision, g["tiles"] * cost.projector
        width = max(g["completions"])
        shared = projector + cost.llm(g["prompt"], 0, 1) + len(g["completions"]) * cost.llm(width, g["prompt"], width)
        ours += vision + projector + shared + 3 * shared
        for c in g["completions"]:
            prompt, completion = (p_max, c_max) if padded else (g["prompt"], c)
            row = projector + cost.llm(prompt + completion, 0, c)
            trl += (vision + row) + (vision + 3 * row)
    return ours, trl
