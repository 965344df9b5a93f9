"""The cascade. Fast: what a recipe may set (the keys the cascade sets are refused, a stage's own seed wins), how
each stage's inputs come from the outputs before it (planned, or recorded in the manifest), what the manifest
hashes, skipping and refusing on rerun (stages faked: no model runs). Slow: the demo cascade end to end through the
CLI: it completes, the manifest is complete, a rerun skips every stage, and on a fixed seed each RL stage raises
held-out accuracy, by 30 points in all, while the online reward's moving average rises."""

import dataclasses
import json
from pathlib import Path

import pytest

from cascade_rl.cli import main
from cascade_rl.config import ConfigError, load_config
from cascade_rl.demo import RECIPE, prepare
from cascade_rl.stages import cascade
from cascade_rl.stages.cascade import (
    CASCADE_SETS,
    DEFAULT_STAGES,
    CascadeConfig,
    plan_stages,
    resolved_config,
    run_cascade,
    validate,
)
from cascade_rl.stages.manifest import Manifest, config_hash
from cascade_rl.stages.pairs import PairsStageConfig
from cascade_rl.stages.report import reward_trend

DATA = {"train": "train.jsonl", "heldout": "heldout.jsonl", "sft": "sft.jsonl", "image_root": "/images"}


def recipe(tmp_path, **sections) -> CascadeConfig:
    """A cascade over every stage with stage defaults, runs under tmp_path; `sections` as a recipe's YAML."""
    base = {"name": "t", "runs_dir": str(tmp_path), "model_path": "/base", "seed": 3, "data": DATA}
    return load_config(CascadeConfig, {**base, **sections})


def built(config: CascadeConfig, manifest=None) -> dict:
    return {plan.name: plan.build() for plan in plan_stages(config, manifest)}


@pytest.mark.parametrize(("stage", "key"), [(s, k) for s, keys in CASCADE_SETS.items() for k in keys])
def test_a_key_the_cascade_sets_is_refused_by_name_with_the_fix(tmp_path, stage, key):
    section = stage.replace("-", "_")  # the dropout-ntp stage's recipe section is dropout_ntp
    with pytest.raises(ConfigError, match=rf"recipe key {section}\.{key}: the cascade sets it .*`cascade-rl {stage}`"):
        recipe(tmp_path, **{section: {key: "mine"}})


def test_the_refusal_says_where_the_value_comes_from(tmp_path):
    with pytest.raises(ConfigError) as err:
        recipe(tmp_path, mpo={"pairs": "my_pairs.jsonl"})
    assert str(err.value).endswith(
        "recipe key mpo.pairs: the cascade sets it from the pairs stage's output (the dropout-ntp stage's, which "
        "includes it, when that runs); remove it, or run the stage alone with `cascade-rl mpo`"
    )
    with pytest.raises(ConfigError, match=r"gspo.image_root: the cascade sets it from data.image_root \(set it there"):
        recipe(tmp_path, gspo={"image_root": "/elsewhere"})


def test_the_top_level_seed_fills_every_stage_and_a_stage_seed_wins(tmp_path):
    stages = built(recipe(tmp_path, mpo={"seed": 7}, rollout={"sampling": {"seed": 5, "n": 2}}))
    assert stages["mpo"].seed == 7
    assert (stages["rollout"].sampling.seed, stages["rollout"].sampling.n) == (5, 2)
    assert stages["sft"].seed == stages["pairs"].seed == stages["gspo"].seed == 3
    assert {stages["eval"].eval_config(label).sampling.seed for label in stages["eval"].checkpoints} == {3}
    assert built(recipe(tmp_path))["rollout"].sampling.seed == 3


def test_within_one_run_each_stage_reads_the_planned_outputs_of_the_ones_before(tmp_path):
    stages, run = built(recipe(tmp_path)), tmp_path / "t"
    assert (stages["sft"].model_path, stages["sft"].data, stages["sft"].image_root) == (
        "/base",
        "sft.jsonl",
        "/images",
    )
    assert stages["rollout"].model_path == stages["mpo"].model_path == str(run / "00_sft" / "final")
    assert stages["pairs"].rollouts == str(run / "01_rollout" / "rollouts")
    assert stages["mpo"].pairs == stages["pairs"].out == str(run / "02_pairs" / "pairs.jsonl")
    format_pairs = str(run / "02_pairs" / "pairs_format_rules.jsonl")
    assert stages["mpo"].format_pairs == stages["pairs"].format_out == format_pairs
    assert stages["filter"].ledger == str(run / "01_rollout" / "ledger.json")
    assert (stages["gspo"].model_path, stages["gspo"].prompts) == (
        str(run / "04_mpo" / "final"),
        stages["filter"].out,
    )
    assert stages["gspo"].out_dir == str(run / "06_gspo")
    assert stages["eval"].checkpoints == {
        "sft": str(run / "00_sft" / "final"),
        "mpo": str(run / "04_mpo" / "final"),
        "gspo": str(run / "06_gspo" / "final"),
    }
    assert stages["eval"].eval_config("mpo").prompts == "heldout.jsonl"


def test_without_sft_and_filter_base_is_evaluated_and_gspo_reads_data_train(tmp_path):
    stages = built(recipe(tmp_path, stages=["rollout", "pairs", "mpo", "gspo", "eval"]))
    assert stages["rollout"].model_path == "/base" and stages["gspo"].prompts == "train.jsonl"
    assert list(stages["eval"].checkpoints) == ["base", "mpo", "gspo"]


def test_dropout_ntp_runs_between_pairs_and_mpo_and_hands_on_both_kinds_of_pair(tmp_path):
    data = {**DATA, "open_ended": "open.jsonl"}
    stages = ["rollout", "pairs", "dropout-ntp", "mpo"]
    run = tmp_path / "t"
    ntp = built(recipe(tmp_path, data=data, stages=stages, dropout_ntp={"start_ratio": 0.25}))
    assert (ntp["dropout-ntp"].model_path, ntp["dropout-ntp"].prompts) == ("/base", "open.jsonl")
    assert ntp["dropout-ntp"].base_pairs == ntp["pairs"].out  # its pairs.jsonl starts with the pairs stage's rows
    assert ntp["dropout-ntp"].out_dir == str(run / "03_dropout-ntp")
    assert ntp["mpo"].pairs == str(run / "03_dropout-ntp" / "pairs.jsonl")
    assert (ntp["dropout-ntp"].start_ratio, ntp["dropout-ntp"].sampling.seed) == (0.25, 3)  # its section; the seed
    alone = built(recipe(tmp_path, data=data, stages=["dropout-ntp", "mpo"]))
    assert alone["dropout-ntp"].base_pairs is None and alone["mpo"].pairs == str(run / "03_dropout-ntp/pairs.jsonl")
    assert "dropout-ntp" not in recipe(tmp_path).stages  # off unless a recipe lists it
    with pytest.raises(ConfigError, match=r"the dropout-ntp stage needs data.open_ended \(prompts without ground"):
        recipe(tmp_path, stages=stages)


def finished(manifest: Manifest, name: str, outputs: dict) -> None:
    manifest.start(name, directory=Path("/earlier"), inputs={}, config={}, digest="0")
    manifest.finish(name, outputs=outputs, wall_s=1.0, summary={})


def test_outputs_of_stages_finished_earlier_come_from_the_manifest(tmp_path):
    config = recipe(tmp_path, stages=["mpo", "filter", "gspo", "eval"])
    manifest = Manifest(tmp_path / "manifest.json", "t")
    finished(manifest, "sft", {"checkpoint": "/earlier/sft"})
    finished(manifest, "rollout", {"rollouts": "/earlier/rollouts", "ledger": "/earlier/ledger.json"})
    finished(manifest, "pairs", {"pairs": "/earlier/pairs.jsonl"})  # a run from before the format pairs file
    finished(manifest, "mpo", {"checkpoint": "/earlier/mpo"})  # listed and finished: its record, not the plan
    stages = built(config, manifest)
    assert (stages["mpo"].model_path, stages["mpo"].pairs) == ("/earlier/sft", "/earlier/pairs.jsonl")
    assert stages["mpo"].pair_files == ["/earlier/pairs.jsonl"]
    assert stages["filter"].ledger == "/earlier/ledger.json"
    assert stages["gspo"].model_path == "/earlier/mpo"
    assert list(stages["eval"].checkpoints.values()) == [
        "/earlier/sft",
        "/earlier/mpo",
        str(tmp_path / "t/06_gspo/final"),
    ]


def test_a_stage_whose_inputs_nobody_produced_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="stage mpo reads the pairs stage's pairs: add pairs to stages, or finish"):
        validate(recipe(tmp_path, stages=["mpo"]))


def test_the_digest_hashes_the_built_config_defaults_included(tmp_path):
    plan = next(p for p in plan_stages(recipe(tmp_path)) if p.name == "pairs")
    resolved = resolved_config("pairs", plan.build())
    defaults = {"answer_rule": "internvl", "max_pairs_per_prompt": 15, "max_format_pairs_per_prompt": 15}
    assert resolved == {**plan.values, **defaults}  # the defaults are recorded and hashed
    explicit = recipe(tmp_path, pairs={"max_pairs_per_prompt": 15, "seed": 3})
    assert resolved_config("pairs", built(explicit)["pairs"]) == resolved  # spelled out or not: one config

    @dataclasses.dataclass(frozen=True)
    class PairsWithAnotherDefault(PairsStageConfig):
        max_pairs_per_prompt: int = 10

    from_new_default = resolved_config("pairs", PairsWithAnotherDefault(**plan.values))
    assert config_hash(from_new_default) != config_hash(resolved)


@pytest.fixture
def fake_stages(monkeypatch):
    """The real config classes with run functions that record the built config instead of training."""
    real, ran = cascade._stage_classes, []

    def classes(name):
        config_cls, _ = real(name)
        return config_cls, lambda config: ran.append(name) or {"stage": name}

    monkeypatch.setattr(cascade, "_stage_classes", classes)
    return ran


def test_a_rerun_skips_finished_stages_and_refuses_a_changed_one_before_running(tmp_path, fake_stages):
    run_cascade(recipe(tmp_path, stages=["rollout", "pairs"]))
    run_cascade(recipe(tmp_path, stages=["rollout", "pairs", "mpo"]))
    assert fake_stages == ["rollout", "pairs", "mpo"]
    entry = Manifest(tmp_path / "t" / "manifest.json", "t").stage("mpo")
    assert entry["inputs"]["pairs"] == str(tmp_path / "t" / "02_pairs" / "pairs.jsonl")
    assert entry["config"]["beta"] == 0.1 and entry["config_hash"] == config_hash(entry["config"])
    with pytest.raises(ValueError, match="stage 'pairs' already ran with another config"):
        run_cascade(recipe(tmp_path, stages=["rollout", "pairs", "mpo", "filter"], pairs={"max_pairs_per_prompt": 2}))
    assert fake_stages == ["rollout", "pairs", "mpo"]  # nothing ran, the filter neither


SMALLER: list[str] = []  # the demo recipe as it is: about 80 s of CPU time on seed 0 (2 threads)


@pytest.mark.slow
def test_cascade_runs_records_its_lineage_skips_on_rerun_and_rl_helps(tmp_path, capsys):
    paths = prepare(tmp_path / "inputs", seed=0)
    args = ["run", str(RECIPE), *[f"{k}={v}" for k, v in paths.items()], f"runs_dir={tmp_path}", "name=ci", *SMALLER]
    assert main(args) == 0
    run = tmp_path / "ci"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(DEFAULT_STAGES)
    for name, entry in manifest["stages"].items():
        assert entry["status"] == "done" and entry["wall_s"] >= 0 and entry["versions"]["torch"], name
        assert entry["inputs"] and entry["config"] and len(entry["config_hash"]) == 16, name
        assert all(Path(p).exists() for p in entry["outputs"].values()), name
    summary = json.loads((run / "07_eval" / "summary.json").read_text())
    accuracy = summary["accuracy"]
    assert set(accuracy) == {"sft", "mpo", "gspo"}
    # 480 held-out prompts: a binomial std of at most 0.023 per accuracy. Seed 0 measured 0.350 → 0.473 → 0.900
    # (recipes/demo/cascade.yaml); the margins below leave room for last-digit differences between machines.
    assert (
        accuracy["sft"] + 0.05 < accuracy["mpo"] < accuracy["gspo"] - 0.15
        and accuracy["gspo"] - accuracy["sft"] >= 0.3
    )
    config = load_config(CascadeConfig, RECIPE, args[2:])
    trend = reward_trend(config)
    assert trend["end"] > trend["start"], trend

    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == len(DEFAULT_STAGES)
