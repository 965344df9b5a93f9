"""A policy's full weights, one bucket of parameters at a time, whether or not DeepSpeed ZeRO-3 partitions them.

Under ZeRO-3 each rank holds 1/world of every parameter; pushing weights to a rollout engine must not rebuild the
whole model on one rank. `full_weights` gathers consecutive parameters up to `bucket_bytes` at once
(`deepspeed.zero.GatheredParameters`, a collective: every rank iterates to the end, in the same order), hands out
copies, and releases the bucket before gathering the next. Without ZeRO-3 it hands out the parameters as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch

DEFAULT_GATHER_BYTES = 256 * 1024 * 1024


def full_weights(
    model, *, bucket_bytes: int = DEFAULT_GATHER_BYTES, trainable_only: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every parameter (`trainable_only`: those with requires_grad), each once (a tied weight
    under its first name), in `named_parameters` order. Partitioned (ZeRO-3) parameters arrive as gathered copies,
    the caller's own; others detached, not copied. The supported model families keep no persistent buffers, so
    parameters are the whole state dict."""
    named = weight_names(model, trainable_only=trainable_only)
    for bucket in _buckets(named, bucket_bytes):
        params = [param for _, param in bucket]
        partitioned = any(hasattr(param, "ds_id") for param in params)
        with _gathered(params) if partitioned else nullcontext():
            for name, param in bucket:
                yield name, param.detach().clone() if partitioned else param.detach()


def weight_names(model, *, trainable_only: bool = False) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs `full_weights` hands out, in its order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's whole shape, also while ZeRO-3 holds only a partition of it (no gather)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def _buckets(named: list, bucket_bytes: int) -> Iterator[list]:
    """Consecutive runs of (name, parameter) of at most `bucket_bytes` full-size bytes (a larger one alone)."""
    bucket, size = [], 0
    for name, param in named:
        nbytes = getattr(param, "ds_numel", param.numel()) * param.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, param))
        size += nbytes
    if bucket:
        yield bucket


def _gathered(params: list):
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)
