"""Cheap identities of files and checkpoints, for cache keys (the MPO reference log-probs).

`checkpoint_fingerprint` reads a few MiB of a checkpoint instead of all its weights (about 16 GB for an 8B model),
once, on rank 0, and broadcasts the result to the other ranks.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import BinaryIO

import torch.distributed as dist

TENSOR_SAMPLE = 1 << 10  # bytes hashed at each end of every tensor in a safetensors file
FILE_SAMPLE = 1 << 20  # bytes hashed at each end of a large file that is not safetensors
WHOLE_FILE_LIMIT = 32 << 20  # other files up to this size (configs, tokenizer, chat template) are hashed whole

Span = tuple[int, int]  # (offset, length) in bytes


def file_sha256(paths: list[Path]) -> str:
    """sha256 over the names and bytes of `paths` (sorted), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read(f: BinaryIO, offset: int, length: int) -> bytes:
    """The one place file bytes are read (the tests count them here)."""
    f.seek(offset)
    return f.read(length)


def _ends(offset: int, length: int, sample: int) -> list[Span]:
    """The first and last `sample` bytes of [offset, offset + length): the whole range when it is short."""
    if length <= 2 * sample:
        return [(offset, length)]
    return [(offset, sample), (offset + length - sample, sample)]


def safetensors_spans(f: BinaryIO, size: int, name: str) -> list[Span]:
    """What to hash of a safetensors file: its header (8-byte little-endian length N, then N bytes of JSON: every
    tensor's name, dtype, shape and data offsets) and both ends of every tensor's bytes."""
    (header_len,) = struct.unpack("<Q", _read(f, 0, 8).ljust(8, b"\0"))
    if header_len > size - 8:
        raise ValueError(f"{name}: not a safetensors file (header length {header_len} > file size {size})")
    header = json.loads(_read(f, 8, header_len))
    start = 8 + header_len
    spans = [(0, start)]
    for key, entry in sorted(header.items(), key=lambda item: item[0]):
        if key != "__metadata__":
            begin, end = entry["data_offsets"]
            spans += _ends(start + begin, end - begin, TENSOR_SAMPLE)
    return spans


def file_spans(f: BinaryIO, path: Path) -> list[Span]:
    """What `checkpoint_fingerprint` hashes of one file."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        return safetensors_spans(f, size, path.name)
    if size <= WHOLE_FILE_LIMIT:
        return [(0, size)]
    return _ends(0, size, FILE_SAMPLE)


def local_checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over the checkpoint directory's files (sorted by name) of: name, size, and the bytes of `file_spans`.

    For a safetensors shard that is the header plus the first and last TENSOR_SAMPLE bytes of every tensor, a few
    MiB for an 8B model instead of 16 GB. The trade-off: a change confined to the middle of a tensor, with both of
    its ends unchanged, goes unseen. Training changes (almost) every element of every trained tensor, so a re-saved
    trained checkpoint differs; and no file time enters the hash, so copying a checkpoint keeps its fingerprint.
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file())
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{path}: no *.safetensors weights to fingerprint")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            for offset, length in file_spans(f, file):
                digest.update(_read(f, offset, length))
    return digest.hexdigest()


def checkpoint_fingerprint(path: str | Path) -> str:
    """`local_checkpoint_fingerprint` computed on rank 0 and broadcast: every rank must call it (a collective when
    torch.distributed is initialised); a failure on rank 0 raises on every rank instead of hanging the others."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local_checkpoint_fingerprint(path)
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", local_checkpoint_fingerprint(path))
        except Exception as err:  # any failure: the other ranks wait in the broadcast below
            box[0] = ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status != "ok":
        raise RuntimeError(f"fingerprint of {path} failed on rank 0: {value}")
    return value
