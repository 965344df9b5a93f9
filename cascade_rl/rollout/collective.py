"""Weights from the trainer to rollout servers over a collective (NCCL between GPUs; gloo on CPUs).

The trainer (rank 0) and the receivers (ranks 1..: one server, or every worker of several vLLM servers) form a
process group of their own, rendezvousing through a TCPStore the trainer hosts; it is built from the backend classes
directly, so it never touches the default process group that accelerate / DDP may own. A push sends the metadata
over HTTP (names, dtypes, shapes) and the tensors over the group: consecutive tensors of one dtype are flattened into
buckets of at most `bucket_bytes`, each bucket one broadcast from rank 0. Both sides derive the same buckets from the
metadata (`plan_buckets`), so only the flat buffers cross the wire. Every collective waits at most `timeout_s`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

BACKENDS = ("nccl", "gloo")
DEFAULT_BUCKET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class TensorSpec:
    """What the receiver needs to rebuild one tensor: its name, dtype (e.g. "float32") and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_json(self) -> list:
        return [self.name, self.dtype, list(self.shape)]

    @classmethod
    def from_json(cls, data: list) -> TensorSpec:
        name, dtype, shape = data
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
        return cls(name, dtype, tuple(int(s) for s in shape))


def spec_of(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def plan_buckets(specs: list[TensorSpec], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[int]]:
    """Group spec indices into buckets: consecutive, one dtype, at most `bucket_bytes` (a larger tensor alone).

    Both ends call this on the same specs, so they agree on every bucket's dtype and length.
    """
    buckets: list[list[int]] = []
    size = 0
    for i, spec in enumerate(specs):
        nbytes = spec.numel * spec.torch_dtype.itemsize
        same_dtype = buckets and specs[buckets[-1][0]].dtype == spec.dtype
        if same_dtype and size + nbytes <= bucket_bytes:
            buckets[-1].append(i)
            size += nbytes
        else:
            buckets.append([i])
            size = nbytes
    return buckets


class WeightGroup:
    """A process group of `world_size` members: rank 0 the trainer (hosts the store), ranks 1.. the receivers (one
    rollout server, or every worker of several vLLM servers).

    backend: "nccl" (tensors on the current CUDA device) or "gloo" (CPU tensors). Rank 0 may pass port 0 and read
    the port it got from `.port`. `connect()` blocks until every member joins or `timeout_s` passes.
    """

    def __init__(
        self, backend: str, host: str, port: int, rank: int, *, world_size: int = 2, timeout_s: float = 300.0
    ):
        if backend not in BACKENDS:
            raise ValueError(f"weight transport backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "nccl" and not torch.cuda.is_available():
            raise RuntimeError("the nccl weight transport needs a CUDA device on both trainer and server")
        self.backend, self.rank, self.timeout = backend, rank, timedelta(seconds=timeout_s)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.world_size = world_size
        self.store = dist.TCPStore(
            host, port, world_size, is_master=rank == 0, timeout=self.timeout, wait_for_workers=False
        )
        self.port = self.store.port
        self.group = None

    def connect(self) -> WeightGroup:
        group_class = dist.ProcessGroupNCCL if self.backend == "nccl" else dist.ProcessGroupGloo
        self.group = group_class(self.store, self.rank, self.world_size, self.timeout)
        return self

    def broadcast(self, buffer: torch.Tensor) -> None:
        """Rank 0's `buffer` into every other member's, in place; raises if a member does not take part in time."""
        self.group.broadcast(buffer, 0, self.timeout).wait(self.timeout)

    def send(self, named: Iterable[tuple[str, torch.Tensor]], specs: list[TensorSpec], bucket_bytes: int) -> None:
        """Rank 0: broadcast `named` (in `specs` order) bucket by bucket, drawing from `named` only the bucket in
        flight (buckets are consecutive), so a source that gathers as it yields never holds the whole model."""
        stream = iter(named)
        for bucket in plan_buckets(specs, bucket_bytes):
            pieces = [next(stream)[1].detach().reshape(-1) for _ in bucket]
            self.broadcast(torch.cat(pieces).to(self.device))
            del pieces
        for name, _ in stream:  # runs the source to its end (a gathering source releases its last bucket there)
            raise ValueError(f"weight source yields {name!r} beyond the {len(specs)} announced tensors")

    def receive(self, specs: list[TensorSpec], bucket_bytes: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks ≥ 1: yield (name, tensor) on this group's device, bucket by bucket, as the broadcasts arrive."""
        for bucket in plan_buckets(specs, bucket_bytes):
            chosen = [specs[i] for i in bucket]
            flat = torch.empty(sum(s.numel for s in chosen), dtype=chosen[0].torch_dtype, device=self.device)
            self.broadcast(flat)
            for spec, piece in zip(chosen, flat.split([s.numel for s in chosen])):
                yield spec.name, piece.view(spec.shape)
