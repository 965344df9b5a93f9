"""The weight group's pieces: bucket plans (derived by hand), tensor specs, and a two-rank gloo round trip."""

import threading

import pytest
import torch

from cascade_rl.rollout.collective import TensorSpec, WeightGroup, plan_buckets, spec_of


def test_buckets_are_consecutive_single_dtype_and_bounded():
    specs = [
        TensorSpec("a", "float32", (4,)),  # 16 bytes
        TensorSpec("b", "float32", (2, 2)),  # 16 bytes: a + b = 32 fits a 40-byte bucket
        TensorSpec("c", "float32", (3,)),  # 12 bytes: 44 > 40, a new bucket
        TensorSpec("d", "bfloat16", (2,)),  # another dtype, a new bucket although 4 bytes would fit
        TensorSpec("e", "float32", (20,)),  # 80 bytes, larger than a bucket: alone
        TensorSpec("f", "float32", (1,)),
    ]
    assert plan_buckets(specs, 40) == [[0, 1], [2], [3], [4], [5]]
    assert plan_buckets(specs, 10**6) == [[0, 1, 2], [3], [4, 5]]


def test_specs_round_trip_and_refuse_unknown_dtypes():
    spec = spec_of("w", torch.zeros(2, 3, dtype=torch.bfloat16))
    assert spec == TensorSpec("w", "bfloat16", (2, 3)) and spec.numel == 6
    assert TensorSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="tensor 'w': unknown dtype 'float99'"):
        TensorSpec.from_json(["w", "float99", [2]])
    with pytest.raises(ValueError, match="backend must be one of"):
        WeightGroup("mpi", "127.0.0.1", 0, 0)


def test_two_ranks_exchange_mixed_dtypes_in_small_buckets():
    torch.manual_seed(0)
    named = [("w", torch.randn(3, 4)), ("b", torch.randn(4)), ("h", torch.randn(5).to(torch.bfloat16))]
    specs = [spec_of(n, t) for n, t in named]
    trainer = WeightGroup("gloo", "127.0.0.1", 0, 0, timeout_s=10)
    received = {}

    def server():
        group = WeightGroup("gloo", "127.0.0.1", trainer.port, 1, timeout_s=10).connect()
        received.update({name: t.clone() for name, t in group.receive(specs, bucket_bytes=40)})

    drawn, drawn_at_broadcast = [], []

    def source():  # a source that materializes as it yields, as a ZeRO-3 gather does
        for item in named:
            drawn.append(item[0])
            yield item

    thread = threading.Thread(target=server)
    thread.start()
    trainer = trainer.connect()
    broadcast = trainer.broadcast
    trainer.broadcast = lambda buffer: drawn_at_broadcast.append(len(drawn)) or broadcast(buffer)
    trainer.send(source(), specs, bucket_bytes=40)
    thread.join(timeout=20)
    # buckets [w] (48 bytes, alone), [b], [h]: each drawn only when its bucket goes out
    assert drawn_at_broadcast == [1, 2, 3]
    assert list(received) == ["w", "b", "h"]
    for name, tensor in named:
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor), name
