"""Load and save policies in Hugging Face format: InternVL (transformers-native) or any causal LM.

The loading code for real checkpoints and for the tiny test models is the same code, pointed at a directory.
Weights are read from safetensors only: pickle files (`*.bin`, `*.pt`, ...) can run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from cascade_rl.models.processor import load_internvl_processor

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
VISION_LANGUAGE_TYPES = ("internvl",)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded, with the reason and the fix."""


def checkpoint_model_type(path: str | Path) -> str:
    """model_type from `path/config.json`, with a clear error when the directory is not a checkpoint."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{path}: no config.json; point model.path at a Hugging Face format checkpoint directory"
        )
    with open(config_file) as f:
        return json.load(f).get("model_type", "")


def _check_weights(path: Path) -> None:
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path}: weights are pickle files ({', '.join(pickles)}), which can execute code when loaded; "
            "convert them to safetensors (e.g. load once in a trusted session and save_pretrained) and retry"
        )
    raise CheckpointError(f"{path}: no *.safetensors weights found")


def load_processor(path: str | Path):
    """The processor (InternVL) or tokenizer (causal LM) of a checkpoint directory, without its weights."""
    path = Path(path)
    if checkpoint_model_type(path) in VISION_LANGUAGE_TYPES:
        return load_internvl_processor(path)
    return AutoTokenizer.from_pretrained(path)


def policy_parameter_names(path: str | Path) -> set[str]:
    """The parameter names `load_policy(path)` would give (what a trainer sends), from the checkpoint's config
    alone: the model is built on the meta device, so no weights are read or allocated. (The names inside the
    safetensors files may follow an older layout that transformers converts when loading.)"""
    return {name for name, _ in meta_policy(path).named_parameters()}


def meta_policy(path: str | Path):
    """The model `load_policy(path)` would build, from config.json alone, on the meta device (shapes, no weights)."""
    from transformers import AutoConfig

    path = Path(path)
    model_type = checkpoint_model_type(path)
    auto = AutoModelForImageTextToText if model_type in VISION_LANGUAGE_TYPES else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(AutoConfig.from_pretrained(path))


def load_policy(path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | None = None):
    """Load (model, processor) from a local Hugging Face format directory.

    InternVL (`model_type: internvl`, the `-HF` checkpoints) → `InternVLForConditionalGeneration` + its processor;
    anything else → `AutoModelForCausalLM` + tokenizer. GitHub-format InternVL (`internvl_chat`) is refused with the
    conversion to run.
    """
    path = Path(path)
    model_type = checkpoint_model_type(path)
    if model_type == "internvl_chat":
        raise CheckpointError(
            f"{path}: GitHub-format InternVL (internvl_chat, remote code); use the '-HF' checkpoint or convert it "
            "with InternVL's tools/internvl_custom2hf.py"
        )
    _check_weights(path)
    kwargs = {"use_safetensors": True, "dtype": dtype or torch.float32}
    if model_type in VISION_LANGUAGE_TYPES:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = load_internvl_processor(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        processor = AutoTokenizer.from_pretrained(path)
    if device is not None:
        model = model.to(device)
    return model, processor


def save_policy(
    model, processor, out_dir: str | Path, *, state_dict: dict | None = None, dtype: torch.dtype | str | None = None
) -> Path:
    """Write model weights (safetensors) and processor/tokenizer files that transformers' Auto classes and vLLM load.

    state_dict: the weights to write instead of the model's own (e.g. gathered from ZeRO-3 partitions).
    dtype: write floating-point weights in this precision and record it in config.json (e.g. "bfloat16" for a
    checkpoint to serve; vLLM's dtype "auto" reads it); None keeps the weights' own precision.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        weights = state_dict if state_dict is not None else model.state_dict()
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    if dtype is not None:
        _record_dtype(out_dir / "config.json", dtype)
    processor.save_pretrained(out_dir)
    return out_dir


def _record_dtype(config_file: Path, dtype: torch.dtype) -> None:
    with open(config_file) as f:
        config = json.load(f)
    config["dtype"] = str(dtype).removeprefix("torch.")
    with open(config_file, "w") as f:
        json.dump(config, f, indent=2)
