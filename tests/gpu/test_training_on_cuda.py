"""GPU paths of the trainers (`make gpu-check`): a GSPO step and an MPO step on CUDA under bf16 autocast, rollouts
from the transformers engine on the device, fp32 master weights kept."""

import pytest
import torch
from stages.conftest import gspo_config, write_pairs

from cascade_rl.train.metrics import read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_gspo_step_on_cuda_in_bf16(tiny_checkpoint, tmp_path):
    from cascade_rl.stages.gspo import GSPOTrainer

    trainer = GSPOTrainer(gspo_config(tiny_checkpoint, tmp_path, optim={"max_steps": 1, "mixed_precision": "bf16"}))
    assert next(trainer.model.parameters()).device.type == "cuda"
    trainer.run()
    (row,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert torch.isfinite(torch.tensor(row["loss"])) and row["grad_norm"] > 0
    assert abs(row["logprob_gap_engine_vs_trainer"]) < 0.1  # fp32 rollouts vs bf16 autocast scoring
    assert next(trainer.model.parameters()).dtype == torch.float32


def test_mpo_step_on_cuda_in_bf16(tiny_checkpoint, tmp_path):
    from dataclasses import replace

    from cascade_rl.stages.mpo import MPO_OPTIM, MPOConfig, run_mpo

    pairs, images = write_pairs(tmp_path)
    config = MPOConfig(
        model_path=str(tiny_checkpoint),
        pairs=str(pairs),
        image_root=str(images),
        out_dir=str(tmp_path / "mpo"),
        optim=replace(MPO_OPTIM, lr=1e-4, max_steps=2, mixed_precision="bf16"),
        max_tiles=4,
    )
    run_mpo(config)
    rows = read_metrics(tmp_path / "mpo" / "metrics.jsonl")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
