"""A gloo weight-transfer backend for vLLM's weight-transfer API, so a CPU trainer pushes to `vllm serve` exactly as
a GPU trainer does over NCCL: the same HTTP routes, the same trainer code, only the backend name differs.

vLLM (0.32) splits a transfer into a worker side (`WeightTransferEngine`, created in each inference worker from the
server's `--weight-transfer-config '{"backend": "gloo"}'`) and a trainer side (`TrainerWeightTransferEngine`, built
by `WeightTransferTrainerFactory.trainer_init`). `register()` adds both under "gloo"; vLLM's plugin loader runs it in
every server process through our `vllm.general_plugins` entry point (pyproject.toml).

The wire is `cascade_rl.rollout.collective`: one process group, the trainer at rank 0, worker w of the fleet at
rank 1 + w; tensors of one dtype flattened into buckets of at most `bucket_bytes`, one broadcast each, every
collective bounded by `timeout_s`. Workers load what arrives through vLLM's layerwise reload (checkpoint-format names
in, kernel layouts rebuilt in `finish_weight_update`), as the NCCL backend does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from cascade_rl.models.gathered import full_shape, full_weights, weight_names
from cascade_rl.rollout.collective import DEFAULT_BUCKET_BYTES, TensorSpec, WeightGroup

BACKEND = "gloo"


@dataclass
class GlooWorkerInitInfo(WeightTransferInitInfo):
    """What a worker needs to join: the trainer's store, its own rank offset and the group's size."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    timeout_s: float = 300.0
    bucket_bytes: int = DEFAULT_BUCKET_BYTES


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One round's tensors, in send order: names, dtype names ("float32", "bfloat16") and shapes."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, d, tuple(s)) for n, d, s in zip(self.names, self.dtype_names, self.shapes, strict=True)]


def worker_rank(parallel_config, rank_offset: int) -> int:
    """This worker's rank in the transfer group: unique over data-parallel replicas, after the trainer's."""
    return rank_offset + parallel_config.data_parallel_index * parallel_config.world_size + parallel_config.rank


class GlooWeightTransferEngine(WeightTransferEngine[GlooWorkerInitInfo, GlooUpdateInfo]):
    """Worker side: joins the trainer's gloo group and loads each round's buckets as they arrive."""

    init_info_cls = GlooWorkerInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    group: WeightGroup | None = None
    bucket_bytes: int = DEFAULT_BUCKET_BYTES

    def init_transfer_engine(self, init_info: GlooWorkerInitInfo) -> None:
        """Join a (new) group; a previous one, e.g. left broken by a failed round, is dropped."""
        rank = worker_rank(self.parallel_config, init_info.rank_offset)
        group = WeightGroup(
            "gloo",
            init_info.master_address,
            init_info.master_port,
            rank,
            world_size=init_info.world_size,
            timeout_s=init_info.timeout_s,
        )
        self.group, self.bucket_bytes = group.connect(), init_info.bucket_bytes

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialised: call init_weight_transfer_engine first")
        self.model.load_weights(self.group.receive(update_info.specs(), self.bucket_bytes))

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        from cascade_rl.rollout.vllm import repack_embeddings

        finalize_layerwise_reload(self.model, self.model_config)
        repack_embeddings(self.model)  # vLLM's CPU backend keeps a stale packed copy of a tied LM head otherwise

    def shutdown(self) -> None:
        self.group = None


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: where the trainer hosts the group's store (port 0: a free one) and the group's size
    (1 + the fleet's workers)."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    timeout_s: float = 300.0
    bucket_bytes: int = DEFAULT_BUCKET_BYTES


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side: hosts the group (rank 0) and, each round, announces the tensors and broadcasts them."""

    init_info_cls = GlooTrainerInitInfo

    group: WeightGroup | None = None
    bucket_bytes: int = DEFAULT_BUCKET_BYTES

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source: WeightSource | None = None):
        if source is None:
            raise ValueError("the gloo weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if not engine.is_sender:
            return engine
        group = WeightGroup(
            "gloo",
            init_info.master_address,
            init_info.master_port,
            0,
            world_size=init_info.world_size,
            timeout_s=init_info.timeout_s,
        )
        worker_info = GlooWorkerInitInfo(
            init_info.master_address,
            group.port,
            1,
            init_info.world_size,
            init_info.timeout_s,
            init_info.bucket_bytes,
        )
        with ThreadPoolExecutor(1) as pool:  # the workers block in the rendezvous until rank 0 connects too
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = group.connect()
            joined.result()
        engine.bucket_bytes = init_info.bucket_bytes
        return engine

    def send_weights(self) -> None:
        """start → (update_weights on the workers ∥ broadcast here) → finish."""
        meta = self.source.metadata()
        if not self.is_sender:  # only take part in the trainer-side gathers
            for _ in self.source:
                pass
            return
        update = GlooUpdateInfo(
            [m.name for m in meta], [_dtype_name(m.dtype) for m in meta], [list(m.shape) for m in meta]
        )
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(1)
        try:
            received = pool.submit(self.client.update_weights, asdict(update))
            self.group.send(iter(self.source), update.specs(), self.bucket_bytes)
            received.result()
        finally:
            pool.shutdown(wait=False)  # after a failed broadcast the workers may never answer: do not wait on them
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


class PolicySource(WeightSource):
    """A `WeightSource` over a policy's trainable weights in checkpoint names, cast to the dtype the servers run
    (`dtype`; None keeps each tensor's own), whether or not DeepSpeed ZeRO-3 partitions them.

    Iterating gathers the weights a bucket at a time (`models/gathered.py::full_weights`), a collective under ZeRO-3:
    every trainer rank iterates each round to its end, in the same order, the sender (rank 0) broadcasting what it
    gets to the servers and the other ranks only taking part in the gathers (vLLM's multi-rank trainer protocol).
    `finish_round` runs what is left of the round, so a sender whose broadcast failed half-way does not leave the
    other ranks waiting in a gather.
    """

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.model, self.dtype = model, dtype
        self._pass = None  # the round's iteration, once started
        self._done = False

    def metadata(self) -> list[ParamMeta]:
        return [
            ParamMeta(name, self.dtype or p.dtype, full_shape(p))
            for name, p in weight_names(self.model, trainable_only=True)
        ]

    def __iter__(self):
        self._pass, self._done = self._stream(), False
        return self._pass

    def _stream(self):
        for name, tensor in full_weights(self.model, trainable_only=True):
            yield name, tensor.to(self.dtype) if self.dtype else tensor
        self._done = True

    @property
    def finished(self) -> bool:
        """Whether this round's pass has run to its end."""
        return self._done

    def finish_round(self) -> None:
        """Iterate the rest of this round's pass (a whole pass when none started)."""
        if not self.finished:
            for _ in self._pass if self._pass is not None else iter(self):
                pass


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def register() -> None:
    """vLLM plugin entry point (group `vllm.general_plugins`): add the gloo backend to both factories. vLLM may
    load plugins several times per process, so a second call does nothing."""
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)
