"""Reference log-probs for MPO, computed once in a no-grad pass and cached beside the pairs file.

The cache is keyed by the reference checkpoint's fingerprint, the pairs file's hash and the tokenisation settings,
so a rerun reuses it and any change recomputes it. While training, no reference model sits in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from cascade_rl.models.pairs import pair_token_logps
from cascade_rl.train.pair_data import PairSource


@torch.no_grad()
def sequence_logps(model, pairs: PairSource, pad_id: int) -> torch.Tensor:
    """[N, 2] summed completion log-probs (chosen, rejected) under `model`, float32 on the CPU; pairs are
    encoded one at a time, so at most one pair's pixels are in memory."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(pairs), 2)
    for i in tqdm(range(len(pairs)), desc="reference log-probs", unit="pair"):
        logps, _ = pair_token_logps(model, pairs.encode(i), pad_id=pad_id)
        out[i] = logps.sum(-1).float().cpu()
    model.train(was_training)
    return out


def read_cache(cache_file: Path, key: dict, n_pairs: int) -> torch.Tensor | None:
    """The cached [N, 2] log-probs when `cache_file` exists and was written for `key` and N pairs, else None."""
    if cache_file.exists():
        cached = torch.load(cache_file, weights_only=True)
        if cached.get("key") == key and cached["logps"].shape == (n_pairs, 2):
            return cached["logps"]
    return None


def write_cache(cache_file: Path, key: dict, logps: torch.Tensor) -> None:
    """Atomically: a temporary file, then a rename."""
    tmp = cache_file.with_suffix(".tmp")
    torch.save({"key": key, "logps": logps}, tmp)
    tmp.replace(cache_file)


def cached_reference_logps(model, pairs: PairSource, cache_file: Path, key: dict, pad_id: int) -> torch.Tensor:
    """Load `cache_file` when its key matches `key`, else compute and write it."""
    logps = read_cache(cache_file, key, len(pairs))
    if logps is None:
        logps = sequence_logps(model, pairs, pad_id)
        write_cache(cache_file, key, logps)
    return logps
