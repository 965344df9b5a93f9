"""checkpoint_fingerprint: equal checkpoints agree, a re-saved changed one differs, few bytes are read, and under
torch.distributed every rank gets rank 0's value."""

import copy
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from cascade_rl.train import fingerprint
from cascade_rl.train.fingerprint import checkpoint_fingerprint, local_checkpoint_fingerprint


def write_checkpoint(directory, tensors, config=None):
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config or {"hidden_size": 8}))
    return directory


def weights(seed=0):
    """A 16 MiB float32 matrix between two small tensors: [2048, 2048], [8], [4, 4]."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "a.bias": torch.randn(8, generator=generator),
        "big.weight": torch.randn(2048, 2048, generator=generator),
        "z.norm": torch.randn(4, 4, generator=generator),
    }


def test_equal_checkpoints_have_equal_fingerprints_and_a_copy_keeps_it(tmp_path):
    first = write_checkpoint(tmp_path / "first", weights())
    second = write_checkpoint(tmp_path / "second", weights())
    shutil.copytree(first, tmp_path / "copy")  # new files, new times: no file time enters the hash
    assert checkpoint_fingerprint(first) == checkpoint_fingerprint(second) == checkpoint_fingerprint(tmp_path / "copy")


@pytest.mark.parametrize("change", ["every_value", "one_tensor_end", "config", "dtype", "extra_file"])
def test_a_resaved_changed_checkpoint_differs(tmp_path, change):
    tensors = weights()
    before = checkpoint_fingerprint(write_checkpoint(tmp_path / "before", tensors))
    changed, config = copy.deepcopy(tensors), None
    if change == "every_value":  # what a training step does: same names, shapes and sizes
        changed = {name: t + 1e-3 for name, t in tensors.items()}
    elif change == "one_tensor_end":  # the last row of the big matrix only
        changed["big.weight"][-1] += 1.0
    elif change == "config":
        config = {"hidden_size": 16}
    elif change == "dtype":
        changed["z.norm"] = changed["z.norm"].to(torch.float64)
    after_dir = write_checkpoint(tmp_path / "after", changed, config)
    if change == "extra_file":
        (after_dir / "chat_template.jinja").write_text("{{ messages }}")
    assert checkpoint_fingerprint(after_dir) != before


def test_a_change_inside_a_tensor_with_unchanged_ends_is_the_documented_blind_spot(tmp_path):
    tensors = weights()
    before = checkpoint_fingerprint(write_checkpoint(tmp_path / "before", tensors))
    tensors["big.weight"][1024, 0] += 1.0  # 8 MiB from either end of the tensor
    assert checkpoint_fingerprint(write_checkpoint(tmp_path / "after", tensors)) == before


def test_reads_far_fewer_bytes_than_the_weights(tmp_path, monkeypatch):
    directory = write_checkpoint(tmp_path / "ckpt", weights())
    size = (directory / "model.safetensors").stat().st_size  # ≈ 16 MiB
    read = []
    original = fingerprint._read
    monkeypatch.setattr(
        fingerprint, "_read", lambda f, offset, length: read.append(length) or original(f, offset, length)
    )
    local_checkpoint_fingerprint(directory)
    assert sum(read) < size / 1000, (sum(read), size)  # header + 2 KiB per tensor + config.json: under 16 KiB


def test_the_real_tiny_checkpoint_resaved_changed_differs(tiny_internvl, tmp_path):
    from cascade_rl.models import save_policy

    model, processor = tiny_internvl
    same = [checkpoint_fingerprint(save_policy(model, processor, tmp_path / name)) for name in ("a", "b")]
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1e-3)
    assert same[0] == same[1] != checkpoint_fingerprint(save_policy(trained, processor, tmp_path / "trained"))


def test_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        checkpoint_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="model.safetensors: not a safetensors file"):
        checkpoint_fingerprint(tmp_path)


RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from cascade_rl.train.fingerprint import checkpoint_fingerprint
    store, rank, path, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        result = {"fingerprint": checkpoint_fingerprint(path)}
    except RuntimeError as err:
        result = {"error": str(err)}
    json.dump(result, open(out, "w"))
    dist.destroy_process_group()
    """
)


def run_two_ranks(tmp_path, paths):
    """Each rank fingerprints its own path (a gloo group of two processes); their results."""
    outs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    store = tmp_path / f"store-{paths[0].name}"
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(store), str(rank), str(paths[rank]), str(outs[rank])])
        for rank in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    return [json.loads(out.read_text()) for out in outs]


def test_rank_zero_computes_and_every_rank_gets_its_value(tmp_path):
    zero = write_checkpoint(tmp_path / "zero", weights(0))
    other = write_checkpoint(tmp_path / "other", weights(1))  # rank 1 would hash these, were it to hash anything
    results = run_two_ranks(tmp_path, [zero, other])
    assert results == [{"fingerprint": local_checkpoint_fingerprint(zero)}] * 2
    failed = run_two_ranks(tmp_path, [tmp_path / "missing", zero])  # rank 0 fails: rank 1 raises too, no hang
    assert all("failed on rank 0: FileNotFoundError" in r["error"] for r in failed), failed
