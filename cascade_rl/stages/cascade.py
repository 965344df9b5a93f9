"""The cascade: optional SFT warm-up → offline rollouts → ledger → pairs → MPO → difficulty filter → GSPO → eval.

Each stage writes into `runs/NAME/NN_stage/` and reads only files written before it; `runs/NAME/manifest.json`
records the lineage. A rerun skips completed stages and resumes the interrupted one (each stage resumes itself).
Stage settings come from the recipe's per-stage sections, filled into the stage's own config dataclass; paths
between stages are derived here, so a recipe never names them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_rl.config import ConfigError, from_dict
from cascade_rl.rollout.vllm_support import require_vllm
from cascade_rl.stages import CASCADE_EVAL, STAGE_ORDER, STAGES
from cascade_rl.stages.manifest import Manifest, config_hash


@dataclass(frozen=True)
class DataConfig:
    """train: prompts with ground truth (jsonl); heldout: evaluation prompts; sft: rows with a `response` column
    (optional: no SFT warm-up without it); image_root: where every file's relative image paths point."""

    train: str = ""
    heldout: str = ""
    sft: str | None = None
    image_root: str | None = None


@dataclass(frozen=True)
class CascadeConfig:
    """`cascade-rl run RECIPE.yaml [key=value ...]`. Per-stage sections hold that stage's config keys (see
    `cascade-rl print-config`); paths (model_path, prompts, pairs, out_dir, ...) are filled in by the cascade."""

    name: str = "cascade"
    runs_dir: str = "runs"
    model_path: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGE_ORDER))
    sft: dict = field(default_factory=dict)
    rollout: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    mpo: dict = field(default_factory=dict)
    filter: dict = field(default_factory=dict)
    gspo: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; valid stages in order: {', '.join(STAGE_ORDER)}")
        if list(self.stages) != [s for s in STAGE_ORDER if s in self.stages]:
            raise ValueError(f"stages must keep the cascade order {', '.join(STAGE_ORDER)}")
        if "sft" in self.stages and not self.data.sft:
            raise ValueError("the sft stage needs data.sft (rows with a `response` column); or drop it from stages")
        if not self.model_path:
            raise ValueError("model_path is required (a Hugging Face format checkpoint directory)")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def stage_dir(config: CascadeConfig, stage: str) -> Path:
    return config.run_dir / f"{STAGE_ORDER.index(stage):02d}_{stage}"


@dataclass
class StagePlan:
    """A stage ready to run: its config dataclass filled with `values`, and the files it will leave behind."""

    name: str
    config_cls: type
    run: Any
    values: dict
    outputs: dict

    def build(self):
        try:
            return from_dict(self.config_cls, self.values)
        except ConfigError as err:
            raise ConfigError(f"stage {self.name}: {err}") from err


def _stage_classes(name: str):
    """(config class, run function) of a cascade stage, imported lazily (validate needs no model libraries)."""
    return (CASCADE_EVAL if name == "eval" else STAGES[name]).load()


def plan_stages(config: CascadeConfig) -> list[StagePlan]:
    """Resolve every stage's config values and outputs; the policy flows base → sft → mpo → gspo."""
    data, plans, policy = config.data, [], config.model_path
    checkpoints = {"base": policy}  # replaced by "sft" when the warm-up runs: RL gains are measured from there
    common = {"image_root": data.image_root}
    for name in config.stages:
        d = stage_dir(config, name)
        section = getattr(config, name)
        if name == "sft":
            values = {"seed": config.seed, **section, **common, "model_path": policy, "data": data.sft}
            outputs = {"checkpoint": str(d / "final")}
        elif name == "rollout":
            values = {**section, **common, "model_path": policy, "prompts": data.train}
            outputs = {"rollouts": str(d / "rollouts"), "ledger": str(d / "ledger.json")}
        elif name == "pairs":
            values = {
                **section,
                "rollouts": str(stage_dir(config, "rollout") / "rollouts"),
                "out": str(d / "pairs.jsonl"),
            }
            outputs = {"pairs": values["out"]}
        elif name == "mpo":
            pairs = str(stage_dir(config, "pairs") / "pairs.jsonl")
            values = {"seed": config.seed, **section, **common, "model_path": policy, "pairs": pairs}
            outputs = {"checkpoint": str(d / "final")}
        elif name == "filter":
            ledger = str(stage_dir(config, "rollout") / "ledger.json")
            values = {**section, "ledger": ledger, "prompts": data.train, "out": str(d / "prompts.jsonl")}
            outputs = {"prompts": values["out"]}
        elif name == "gspo":
            prompts = str(stage_dir(config, "filter") / "prompts.jsonl") if "filter" in config.stages else data.train
            values = {"seed": config.seed, **section, **common, "model_path": policy, "prompts": prompts}
            outputs = {"checkpoint": str(d / "final")}
        else:
            settings = {**section, **common, "prompts": data.heldout}
            values = {"checkpoints": dict(checkpoints), "settings": settings}
            outputs = {"summary": str(d / "summary.json")}
        if name not in ("pairs", "filter"):
            values["out_dir"] = str(d)
        config_cls, run = _stage_classes(name)
        plans.append(StagePlan(name, config_cls, run, values, outputs))
        if "checkpoint" in outputs:
            policy = outputs["checkpoint"]
            if name == "sft":
                checkpoints.pop("base")
            checkpoints[name] = policy
    return plans


def validate(config: CascadeConfig) -> list:
    """Build every stage's config (unknown keys and refused combinations raise); loads no model."""
    return [plan.build() for plan in plan_stages(config)]


def uses_vllm(stage_configs: list) -> bool:
    """Whether any built stage config samples with engine=vllm."""
    return any(getattr(stage, "engine", None) == "vllm" for stage in stage_configs)


def run_cascade(config: CascadeConfig) -> dict:
    """Run every stage not yet done (per the manifest); returns {stage: summary}."""
    if uses_vllm(validate(config)):
        require_vllm()  # before the first stage, not when the rollout stage is reached
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "cascade_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    manifest = Manifest(config.run_dir / "manifest.json", config.name)
    summaries = {}
    for plan in plan_stages(config):
        digest = config_hash(plan.values)
        if manifest.is_done(plan.name, digest):
            print(f"[cascade] {plan.name}: done before, skipped", flush=True)
            summaries[plan.name] = manifest.stage(plan.name)["summary"]
            continue
        print(f"[cascade] {plan.name}: running in {stage_dir(config, plan.name)}", flush=True)
        manifest.start(plan.name, directory=stage_dir(config, plan.name), inputs=plan.values, digest=digest)
        started = time.time()
        summary = plan.run(plan.build())
        manifest.finish(plan.name, outputs=plan.outputs, wall_s=time.time() - started, summary=_jsonable(summary))
        summaries[plan.name] = summary
    return summaries


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
