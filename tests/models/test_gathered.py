"""`full_weights`: every parameter once, bucket by bucket; an engine holding its own copy adopts them (the ZeRO-3
gathering itself runs in tests/stages/test_gspo_deepspeed.py)."""

import torch

from cascade_rl.models.gathered import _buckets, full_weights
from cascade_rl.rollout.hf import HFEngine


def test_every_parameter_once_in_buckets_of_bounded_size(tiny_internvl):
    model, _ = tiny_internvl
    named = list(model.named_parameters())
    assert model.config.tie_word_embeddings  # the LM head shares the embedding: it must go once
    out = list(full_weights(model, bucket_bytes=4096))
    assert [n for n, _ in out] == [n for n, _ in named] and "lm_head.weight" not in dict(out)
    assert all(torch.equal(t, p) for (_, t), (_, p) in zip(out, named))
    buckets = list(_buckets(named, 4096))
    assert sum(len(b) for b in buckets) == len(named) and len(buckets) > 1
    for bucket in buckets:  # 4-byte floats: at most 1024 numbers per bucket unless one parameter is larger alone
        assert len(bucket) == 1 or sum(p.numel() for _, p in bucket) * 4 <= 4096


def test_an_engine_with_its_own_copy_adopts_the_trained_weights(tiny_internvl):
    model, processor = tiny_internvl
    trained, copy = (type(model)(model.config).eval() for _ in range(2))
    trained.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    engine = HFEngine(copy, processor)
    engine.update_weights(trained)
    for (name, a), b in zip(copy.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), name
