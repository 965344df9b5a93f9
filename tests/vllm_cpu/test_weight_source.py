"""The trainer side of a weight push on its own (vLLM's weight-transfer classes, no server): what `PolicySource`
declares and yields, and a non-sender rank's push, which iterates the round's weights and touches no server."""

import pytest
import torch

from cascade_rl.models.parts import freeze_parts
from cascade_rl.rollout.vllm_server import VLLMServerEngine

pytestmark = pytest.mark.vllm


def test_policy_source_declares_what_it_yields_trainable_only_and_cast(hd32_internvl):
    from cascade_rl.rollout.vllm_transfer import PolicySource

    model, _ = hd32_internvl
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    freeze_parts(model, vision=True)
    try:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        source = PolicySource(model, torch.bfloat16)
        meta = source.metadata()
        yielded = list(source)
    finally:  # the session's model, as it was
        for name, param in model.named_parameters():
            param.requires_grad_(before[name])
    assert [m.name for m in meta] == [n for n, _ in yielded] == list(trainable)
    assert not any("vision_tower" in m.name for m in meta) and len(meta) < len(dict(model.named_parameters()))
    for m, (name, tensor) in zip(meta, yielded):
        assert m.dtype == tensor.dtype == torch.bfloat16 and m.shape == tuple(tensor.shape)
        assert torch.equal(tensor, trainable[name].detach().to(torch.bfloat16)), name


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_a_non_sender_rank_pushes_by_iterating_and_never_calls_a_server(hd32_internvl, backend):
    model, processor = hd32_internvl
    # nothing listens on port 9: any HTTP call would fail the push (and, with one try, raise TransferFailed)
    engine = VLLMServerEngine(["http://127.0.0.1:9"], processor, weight_backend=backend, retries=1, timeout_s=5)
    engine.trainer_rank, engine.sender, engine.wire_dtype = 1, False, None
    engine.update_weights(model)
    assert engine.transfer is not None and not engine.transfer.is_sender
    assert engine.transfer.source.finished  # the whole round iterated: its gathers, under ZeRO-3, taken part in
