"""Shipped DeepSpeed / accelerate configs parse and point at files that exist."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage):
    config = json.loads((ROOT / f"recipes/deepspeed/zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    launcher = yaml.safe_load((ROOT / f"recipes/deepspeed/accelerate_zero{stage}.yaml").read_text())
    assert launcher["distributed_type"] == "DEEPSPEED"
    assert (ROOT / launcher["deepspeed_config"]["deepspeed_config_file"]).is_file()
