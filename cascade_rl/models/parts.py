"""Which parameters belong to the vision tower, the projector and the language model; freezing; LoRA."""

from __future__ import annotations

import torch


def model_parts(model) -> dict[str, list[torch.nn.Parameter]]:
    """{"vision": [...], "projector": [...], "llm": [...]}; a causal LM has only "llm"."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "vision_tower"):
        return {"vision": [], "projector": [], "llm": list(model.parameters())}
    vision = list(inner.vision_tower.parameters())
    projector = list(inner.multi_modal_projector.parameters())
    taken = {id(p) for p in vision + projector}
    llm = [p for p in model.parameters() if id(p) not in taken]
    return {"vision": vision, "projector": projector, "llm": llm}


def full_numel(p: torch.nn.Parameter) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 holds only a partition of it here (`ds_numel`)."""
    return getattr(p, "ds_numel", p.numel())


def freeze_parts(model, *, vision: bool = False, projector: bool = False, llm: bool = False) -> dict[str, int]:
    """Set requires_grad=False on the chosen parts; returns trainable parameter counts per part."""
    frozen = {"vision": vision, "projector": projector, "llm": llm}
    parts = model_parts(model)
    for name, params in parts.items():
        for p in params:
            p.requires_grad_(not frozen[name])
    counts = {name: sum(full_numel(p) for p in params if p.requires_grad) for name, params in parts.items()}
    if not any(counts.values()):
        raise ValueError("every part is frozen: nothing would train; unfreeze vision, projector or llm")
    return counts


LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_lora(model, *, rank: int, alpha: int, dropout: float = 0.0, target_modules: str = LORA_TARGETS):
    """Wrap the language model's linear layers with LoRA adapters (peft); other weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    return get_peft_model(model, config)


def merge_lora(model):
    """Fold LoRA adapters back into plain weights, so the checkpoint loads without peft."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
