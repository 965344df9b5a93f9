"""Model-family knowledge lives here: loading and saving, the InternVL template, tiling, tiny builders.

Stages never touch `pixel_values` or tiling themselves; they call these functions: `encode_chat` / `encode_prompt`
/ `encode_request` (chat.py, inputs.py) turn rows and requests into ids and pixels, `collate_chats` /
`collate_prompts` (inputs.py) into batched model tensors; pairs.py encodes and scores MPO pairs.
"""

from cascade_rl.models.chat import (
    EncodedChat,
    encode_chat,
    encode_prompt,
    process_images,
    tiles_per_image,
    tiling_kwargs,
    tokenizer_of,
)
from cascade_rl.models.inputs import (
    PromptInputs,
    collate_chats,
    collate_prompts,
    completion_logps,
    encode_request,
    with_vision_cache,
)
from cascade_rl.models.io import CheckpointError, load_policy, save_policy
from cascade_rl.models.processor import InternVLImageProcessor, build_internvl_processor, load_internvl_processor
from cascade_rl.models.tiny import TINY_PRESETS, TinySpec, build_tiny_causal_lm, build_tiny_internvl, init_tiny
from cascade_rl.models.tokenizer import build_tiny_tokenizer

__all__ = [
    "CheckpointError",
    "EncodedChat",
    "InternVLImageProcessor",
    "PromptInputs",
    "TINY_PRESETS",
    "TinySpec",
    "build_internvl_processor",
    "build_tiny_causal_lm",
    "build_tiny_internvl",
    "build_tiny_tokenizer",
    "collate_chats",
    "collate_prompts",
    "completion_logps",
    "encode_chat",
    "encode_prompt",
    "encode_request",
    "init_tiny",
    "load_internvl_processor",
    "load_policy",
    "process_images",
    "save_policy",
    "tiles_per_image",
    "tiling_kwargs",
    "tokenizer_of",
    "with_vision_cache",
]
