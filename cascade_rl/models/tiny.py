"""Tiny InternVL models built in-process: transformers' native InternVL classes with small configs.

Presets: `tiny` (fast tests), `tiny_hd32` (the same with head_dim 32, the smallest vLLM's CPU attention takes) and
`internvl3_5_1b_ratio` (vision : LLM parameters ≈ 1 : 2, InternVL3.5-1B's proportion of a 0.3B InternViT to a 0.8B
Qwen3, for benchmarks with realistic costs). `build_tiny_causal_lm` gives a text-only Qwen3 with the same tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from cascade_rl.models.processor import build_internvl_processor
from cascade_rl.models.tokenizer import build_tiny_tokenizer


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny InternVL. Tokens per tile = (tile_size / patch_size)² · downsample_ratio²."""

    tile_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    max_tiles: int = 6
    vocab_size: int = 1024
    # transformers initialises InternViT's position embeddings to zero; a pretrained tower has learned ones. At
    # zero every patch looks the same wherever it is, and a tiny model cannot learn where things are in a few
    # hundred steps, so the tiny builder draws them from N(0, std²).
    position_embedding_std: float = 0.5

    @property
    def tokens_per_tile(self) -> int:
        return (self.tile_size // self.patch_size) ** 2 // 4


TINY_PRESETS = {
    "tiny": TinySpec(),
    # head_dim = 64 / 2 = 32: vLLM's CPU attention refuses head sizes below 32 (and `tiny` has 16).
    "tiny_hd32": TinySpec(text_heads=2, text_kv_heads=1),
    # vision ≈ 1/3 of all parameters, as in InternVL3.5-1B (0.3B vision, 0.8B language).
    "internvl3_5_1b_ratio": TinySpec(
        vision_hidden=128, vision_layers=4, vision_heads=4, text_hidden=128, text_layers=9, text_heads=4
    ),
}


def tiny_text_config(spec: TinySpec, tokenizer) -> Qwen3Config:
    """The Qwen3 language model of a tiny InternVL (or a tiny text-only policy)."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        head_dim=spec.text_hidden // spec.text_heads,
        intermediate_size=3 * spec.text_hidden,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_internvl_config(spec: TinySpec, tokenizer) -> InternVLConfig:
    """InternVLConfig with an InternViT-style vision tower and a Qwen3 text model of the given sizes."""
    vision = InternVLVisionConfig(
        hidden_size=spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        intermediate_size=4 * spec.vision_hidden,
        image_size=spec.tile_size,
        patch_size=spec.patch_size,
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=tiny_text_config(spec, tokenizer),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=spec.tokens_per_tile,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
    )


def build_tiny_internvl(spec: TinySpec | str = "tiny", *, seed: int = 0, **overrides):
    """Build (model, processor): a randomly initialised tiny InternVL, deterministic for a given seed.

    The global RNG is left untouched. `overrides` replace TinySpec fields, e.g. `max_tiles=4`.
    """
    spec = TINY_PRESETS[spec] if isinstance(spec, str) else spec
    spec = replace(spec, **overrides)
    tokenizer = build_tiny_tokenizer(spec.vocab_size)
    config = tiny_internvl_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config)
        positions = model.model.vision_tower.embeddings.position_embeddings
        with torch.no_grad():
            positions.normal_(0.0, spec.position_embedding_std)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_internvl_processor(
        tokenizer, tile_size=spec.tile_size, image_seq_length=spec.tokens_per_tile, max_tiles=spec.max_tiles
    )
    return model.eval(), processor


def build_tiny_causal_lm(spec: TinySpec | str = "tiny_hd32", *, seed: int = 0):
    """Build (model, tokenizer): a randomly initialised text-only Qwen3 with the tiny tokenizer (ChatML template)."""
    spec = TINY_PRESETS[spec] if isinstance(spec, str) else spec
    tokenizer = build_tiny_tokenizer(spec.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(tiny_text_config(spec, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def vision_language_parameter_counts(model) -> tuple[int, int]:
    """(vision tower + projector, language model) parameter counts."""
    inner = model.model
    vision = sum(p.numel() for p in inner.vision_tower.parameters())
    vision += sum(p.numel() for p in inner.multi_modal_projector.parameters())
    language = sum(p.numel() for p in inner.language_model.parameters())
    return vision, language


def init_tiny(out_dir: str | Path, preset: str = "tiny", *, seed: int = 0, dtype: str | None = None) -> Path:
    """Write a tiny InternVL checkpoint (safetensors + processor files) to `out_dir`, in `dtype` if given."""
    from cascade_rl.models.io import save_policy

    model, processor = build_tiny_internvl(preset, seed=seed)
    return save_policy(model, processor, out_dir, dtype=dtype)
