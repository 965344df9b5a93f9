"""Shipped DeepSpeed / accelerate configs parse and point at files that exist."""

import json
from pathlib import Path

import pytest
import yaml
from models.test_system_prompt import INTERNVL_DEFAULT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage):
    config = json.loads((ROOT / f"recipes/deepspeed/zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    launcher = yaml.safe_load((ROOT / f"recipes/deepspeed/accelerate_zero{stage}.yaml").read_text())
    assert launcher["distributed_type"] == "DEEPSPEED"
    assert (ROOT / launcher["deepspeed_config"]["deepspeed_config_file"]).is_file()


INTERNVL_RECIPES = sorted((ROOT / "recipes" / "internvl3_5").glob("*_cascade.yaml"))


def test_every_internvl3_5_size_has_a_recipe():
    sizes = {p.name.removesuffix("_cascade.yaml") for p in INTERNVL_RECIPES}
    assert sizes == {"1b", "2b", "4b", "8b", "14b", "38b", "30b_a3b", "241b_a28b"}


@pytest.mark.parametrize(
    "recipe", INTERNVL_RECIPES + [ROOT / "recipes" / "demo" / "cascade.yaml"], ids=lambda p: p.stem
)
def test_recipe_validates_without_loading_a_model(recipe, recwarn):
    from cascade_rl.config import load_config
    from cascade_rl.stages.cascade import CascadeConfig, validate

    overrides = ["model_path=/models/x", "data.train=t.jsonl", "data.heldout=h.jsonl", "data.sft=s.jsonl"]
    built = {type(c).__name__: c for c in validate(load_config(CascadeConfig, recipe, overrides))}
    if "internvl3_5" in recipe.parts:
        mpo, gspo = built["MPOConfig"], built["GSPOConfig"]
        # Released settings (SPEC §1, §3): MPO lr 2e-7, β 0.1, weights (0.8, 0.2, 1.0), cosine, warmup 0.03, wd 0.05,
        # 12 tiles; GSPO 16 rollouts, 512 prompts per step, temperature 1.0, vision frozen, no KL.
        optim = mpo.optim
        assert (optim.lr, mpo.beta, tuple(mpo.loss_weights), optim.lr_schedule) == (
            2e-7,
            0.1,
            (0.8, 0.2, 1.0),
            "cosine",
        )
        assert (optim.warmup_ratio, optim.weight_decay, mpo.max_tiles, optim.epochs) == (0.03, 0.05, 12, 1)
        assert (gspo.sampling.n, gspo.prompts_per_step, gspo.sampling.temperature) == (16, 512, 1.0)
        assert gspo.freeze_vision and gspo.kl_coef == 0.0
        assert gspo.optim.lr == (8e-7 if "241b" in recipe.name else 1e-6)
        # Offline prompts as InternVL's pipeline (SPEC §2): its template's default system prompt in sampling and MPO,
        # the en_v2 boxed-answer instruction in sampling; online (verl) renders no system turn.
        rollout = built["RolloutStageConfig"]
        assert rollout.system_prompt == mpo.system_prompt == INTERNVL_DEFAULT
        assert rollout.prompt_instruction == "internvl" and gspo.system_prompt is None
        # Pairs as InternVL's postprocess builds them (SPEC §2); the online reward is verl's geo3k (SPEC §3).
        pairs = built["PairsStageConfig"]
        assert (pairs.answer_rule, pairs.max_pairs_per_prompt, pairs.max_format_pairs_per_prompt) == (
            "internvl",
            15,
            15,
        )
        assert [r.name for r in gspo.rewards] == ["geo3k"] and [(c.reward, c.threshold) for c in gspo.correct] == [
            ("geo3k", 0.9)
        ]
    else:  # the demo's answers are 17 characters: InternVL's length rule would make every one a format failure
        assert built["PairsStageConfig"].answer_rule == "strict"


def test_a_misspelt_key_is_refused_with_the_valid_ones():
    from cascade_rl.config import ConfigError, load_config
    from cascade_rl.stages.cascade import CascadeConfig, validate

    config = load_config(CascadeConfig, INTERNVL_RECIPES[0], ["model_path=/m", "mpo.lrr=1"])
    with pytest.raises(ConfigError, match="stage mpo: unknown key 'lrr'; valid keys: model_path"):
        validate(config)
