"""The cascade: optional SFT warm-up → offline rollouts → ledger → pairs (→ optional DropoutNTP pairs) → MPO →
difficulty filter → GSPO → eval.

Each stage writes into `runs/NAME/NN_stage/` and reads only files written before it; `runs/NAME/manifest.json`
records the lineage. A rerun skips completed stages and resumes the interrupted one (each stage resumes itself).
Stage settings come from the recipe's per-stage sections, filled into the stage's own config dataclass. The keys
that chain the stages (`CASCADE_SETS`: model_path, prompts, pairs, out_dir, image_root, ...) are the cascade's: a
section naming one is refused. A stage reads the outputs of the stages before it: as recorded in the manifest when
they finished in an earlier run, else as planned in this run.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_rl.config import ConfigError, from_dict
from cascade_rl.rollout.vllm_support import require_vllm
from cascade_rl.stages import CASCADE_EVAL, DEFAULT_STAGES, STAGE_ORDER, STAGES
from cascade_rl.stages.manifest import Manifest, config_hash

_POLICY = "from the checkpoint of the training stage before it (the top-level model_path for the first)"
_DIR = "to a path in the stage's directory (runs_dir/name/NN_stage)"
_IMAGES = "from data.image_root (set it there)"
# stage → {key the cascade sets: where its value comes from}: a recipe section naming one is refused with this reason.
CASCADE_SETS: dict[str, dict[str, str]] = {
    "sft": {"model_path": _POLICY, "data": "from data.sft (set it there)", "image_root": _IMAGES, "out_dir": _DIR},
    "rollout": {
        "model_path": _POLICY,
        "prompts": "from data.train (set it there)",
        "image_root": _IMAGES,
        "out_dir": _DIR,
    },
    "pairs": {"rollouts": "from the rollout stage's output", "out": _DIR, "format_out": _DIR},
    "dropout-ntp": {
        "model_path": _POLICY,
        "prompts": "from data.open_ended (set it there)",
        "image_root": _IMAGES,
        "out_dir": _DIR,
        "base_pairs": "from the pairs stage's output (none without a pairs stage)",
    },
    "mpo": {
        "model_path": _POLICY,
        "pairs": "from the pairs stage's output (the dropout-ntp stage's, which includes it, when that runs)",
        "format_pairs": "from the pairs stage's output",
        "image_root": _IMAGES,
        "out_dir": _DIR,
    },
    "filter": {"ledger": "from the rollout stage's output", "prompts": "from data.train (set it there)", "out": _DIR},
    "gspo": {
        "model_path": _POLICY,
        "prompts": "from the filter stage's output (data.train without a filter stage)",
        "image_root": _IMAGES,
        "out_dir": _DIR,
    },
    "eval": {
        "model_path": "to each checkpoint of the lineage",
        "prompts": "from data.heldout (set it there)",
        "image_root": _IMAGES,
        "out": _DIR,
    },
}
# stage → {output: its path inside the stage's directory}
OUTPUTS: dict[str, dict[str, str]] = {
    "sft": {"checkpoint": "final"},
    "rollout": {"rollouts": "rollouts", "ledger": "ledger.json"},
    "pairs": {"pairs": "pairs.jsonl", "format_pairs": "pairs_format_rules.jsonl"},
    "dropout-ntp": {"pairs": "pairs.jsonl", "rollouts": "rollouts"},
    "mpo": {"checkpoint": "final"},
    "filter": {"prompts": "prompts.jsonl"},
    "gspo": {"checkpoint": "final"},
    "eval": {"summary": "summary.json"},
}


@dataclass(frozen=True)
class DataConfig:
    """train: prompts with ground truth (jsonl); heldout: evaluation prompts; sft: rows with a `response` column
    (optional: no SFT warm-up without it); open_ended: prompts without ground truth for the dropout-ntp stage
    (optional); image_root: where every file's relative image paths point."""

    train: str = ""
    heldout: str = ""
    sft: str | None = None
    open_ended: str | None = None
    image_root: str | None = None


@dataclass(frozen=True)
class CascadeConfig:
    """`cascade-rl run RECIPE.yaml [key=value ...]`. Per-stage sections hold that stage's config keys (see
    `cascade-rl print-config`; the dropout-ntp stage's section is `dropout_ntp`), except those the cascade sets
    (`CASCADE_SETS`), which are refused. `stages` lists every stage but dropout-ntp unless the recipe says otherwise.
    `seed` is the default of every stage's seed (`seed`, or `sampling.seed`); a seed set in a section wins."""

    name: str = "cascade"
    runs_dir: str = "runs"
    model_path: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    sft: dict = field(default_factory=dict)
    rollout: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    dropout_ntp: dict = field(default_factory=dict)
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
        if "dropout-ntp" in self.stages and not self.data.open_ended:
            raise ValueError("the dropout-ntp stage needs data.open_ended (prompts without ground truth); or drop it")
        if not self.model_path:
            raise ValueError("model_path is required (a Hugging Face format checkpoint directory)")
        for stage in STAGE_ORDER:
            refuse_cascade_keys(stage, getattr(self, STAGES[stage].section))

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def refuse_cascade_keys(stage: str, section: dict) -> None:
    """A recipe section may not set what the cascade sets: it would be overridden without a word."""
    name = STAGES[stage].section
    if not isinstance(section, dict):
        raise ValueError(f"recipe key {name}: expected a section (mapping) of {stage} config keys, got {section!r}")
    for key, source in CASCADE_SETS[stage].items():
        if key in section:
            raise ValueError(
                f"recipe key {name}.{key}: the cascade sets it {source}; remove it, or run the stage alone with "
                f"`cascade-rl {stage}`"
            )


def stage_dir(config: CascadeConfig, stage: str) -> Path:
    return config.run_dir / f"{STAGE_ORDER.index(stage):02d}_{stage}"


@dataclass
class StagePlan:
    """A stage ready to run: its config dataclass filled with `values`, of which `inputs` are the keys the cascade
    set (the lineage the manifest records), and the files it will leave behind."""

    name: str
    config_cls: type
    run: Any
    values: dict
    inputs: dict
    outputs: dict

    def build(self):
        try:
            return from_dict(self.config_cls, self.values)
        except ConfigError as err:
            raise ConfigError(f"stage {self.name}: {err}") from err


def _stage_classes(name: str):
    """(config class, run function) of a cascade stage, imported lazily (validate needs no model libraries)."""
    return (CASCADE_EVAL if name == "eval" else STAGES[name]).load()


def plan_stages(config: CascadeConfig, manifest: Manifest | None = None) -> list[StagePlan]:
    """Resolve every listed stage's config values and outputs. A stage reads the outputs of the stages before it,
    listed or not: those `manifest` records as finished (default: the run directory's manifest.json, if any), else
    those planned here. The policy flows base → sft → mpo → gspo."""
    if manifest is None:
        manifest = Manifest(config.run_dir / "manifest.json", config.name)
    recorded, produced, plans = manifest.finished_outputs(), {}, []
    for name in STAGE_ORDER:
        if name in config.stages:
            plan = _plan_stage(config, name, produced)
            plans.append(plan)
            produced[name] = recorded.get(name, plan.outputs)
        elif name in recorded:
            produced[name] = recorded[name]
    return plans


def _plan_stage(config: CascadeConfig, name: str, produced: dict[str, dict]) -> StagePlan:
    """The plan of stage `name`, given the outputs `produced` by the stages before it."""
    directory = stage_dir(config, name)
    outputs = {key: str(directory / path) for key, path in OUTPUTS[name].items()}
    inputs = _inputs(config, name, produced, outputs)
    section = _seeded(STAGES[name].load()[0], getattr(config, STAGES[name].section), config.seed)
    if name == "eval":
        settings = {**section, "prompts": inputs["prompts"], "image_root": inputs["image_root"]}
        values = {"checkpoints": inputs["checkpoints"], "settings": settings, "out_dir": str(directory)}
    else:
        values = {**section, **inputs}
    config_cls, run = _stage_classes(name)
    return StagePlan(name, config_cls, run, values, inputs, outputs)


def _inputs(config: CascadeConfig, name: str, produced: dict[str, dict], outputs: dict) -> dict:
    """The keys the cascade sets for stage `name` (CASCADE_SETS): from `data` and the outputs of earlier stages."""
    data, directory = config.data, str(stage_dir(config, name))
    policy = ([out["checkpoint"] for out in produced.values() if "checkpoint" in out] or [config.model_path])[-1]
    if name == "sft":
        return {"model_path": policy, "data": data.sft, "image_root": data.image_root, "out_dir": directory}
    if name == "rollout":
        return {"model_path": policy, "prompts": data.train, "image_root": data.image_root, "out_dir": directory}
    if name == "pairs":
        rollouts = _output_of(config, produced, name, "rollout", "rollouts")
        return {"rollouts": rollouts, "out": outputs["pairs"], "format_out": outputs["format_pairs"]}
    if name == "dropout-ntp":
        base = produced["pairs"]["pairs"] if "pairs" in produced else None
        prompts, images = data.open_ended, data.image_root
        return {
            "model_path": policy,
            "prompts": prompts,
            "image_root": images,
            "out_dir": directory,
            "base_pairs": base,
        }
    if name == "mpo":
        producer = "dropout-ntp" if "dropout-ntp" in produced else "pairs"  # its pairs include the pairs stage's
        pairs = _output_of(config, produced, name, producer, "pairs")
        format_pairs = produced.get("pairs", {}).get("format_pairs")  # absent from manifests before format files
        return {
            "model_path": policy,
            "pairs": pairs,
            "format_pairs": format_pairs,
            "image_root": data.image_root,
            "out_dir": directory,
        }
    if name == "filter":
        ledger = _output_of(config, produced, name, "rollout", "ledger")
        return {"ledger": ledger, "prompts": data.train, "out": outputs["prompts"]}
    if name == "gspo":
        prompts = produced["filter"]["prompts"] if "filter" in produced else data.train
        return {"model_path": policy, "prompts": prompts, "image_root": data.image_root, "out_dir": directory}
    return {"checkpoints": _lineage(config, produced), "prompts": data.heldout, "image_root": data.image_root}


def _output_of(config: CascadeConfig, produced: dict[str, dict], stage: str, producer: str, key: str) -> str:
    if producer not in produced:
        raise ConfigError(
            f"stage {stage} reads the {producer} stage's {key}: add {producer} to stages, or finish it first in this "
            f"run ({config.run_dir / 'manifest.json'} records no finished {producer} stage)"
        )
    return produced[producer][key]


def _lineage(config: CascadeConfig, produced: dict[str, dict]) -> dict[str, str]:
    """label → checkpoint the eval stage scores: the base policy, replaced by "sft" when the warm-up ran (RL gains
    are measured from there), then every later training stage's checkpoint."""
    checkpoints = {name: out["checkpoint"] for name, out in produced.items() if "checkpoint" in out}
    return checkpoints if "sft" in checkpoints else {"base": config.model_path, **checkpoints}


def _seeded(config_cls: type, section: dict, seed: int) -> dict:
    """`section` with `seed` filled in where the stage's config has one (`seed`, else `sampling.seed`) and the
    section leaves it unset: a seed the section sets wins."""
    hints = typing.get_type_hints(config_cls)
    if "seed" in hints:
        return {"seed": seed, **section}
    sampling = hints.get("sampling")
    nested = section.get("sampling") or {}
    if dataclasses.is_dataclass(sampling) and "seed" in typing.get_type_hints(sampling) and isinstance(nested, dict):
        return {**section, "sampling": {"seed": seed, **nested}}
    return section


def validate(config: CascadeConfig) -> list:
    """Build every stage's config (unknown keys and refused combinations raise); loads no model."""
    return [plan.build() for plan in plan_stages(config)]


def uses_vllm(stage_configs: list) -> bool:
    """Whether any built stage config samples with engine=vllm."""
    return any(getattr(stage, "engine", None) == "vllm" for stage in stage_configs)


def resolved_config(name: str, built) -> dict:
    """A built stage config as plain data, defaults included: what the manifest records and hashes, so changing a
    default reruns the stage. For the cascade's eval: each checkpoint's EvalConfig, by label."""
    if name == "eval":
        return {label: dataclasses.asdict(built.eval_config(label)) for label in built.checkpoints}
    return dataclasses.asdict(built)


def run_cascade(config: CascadeConfig) -> dict:
    """Run every stage not yet done (per the manifest); returns {stage: summary}."""
    manifest = Manifest(config.run_dir / "manifest.json", config.name)
    plans = plan_stages(config, manifest)
    built = [plan.build() for plan in plans]
    if uses_vllm(built):
        require_vllm()  # before the first stage, not when the rollout stage is reached
    resolved = [resolved_config(plan.name, stage) for plan, stage in zip(plans, built)]
    # A finished stage whose config changed raises here, before any stage runs.
    done = [manifest.is_done(plan.name, config_hash(values)) for plan, values in zip(plans, resolved)]
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "cascade_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    summaries = {}
    for plan, stage, values, finished in zip(plans, built, resolved, done):
        if finished:
            print(f"[cascade] {plan.name}: done before, skipped", flush=True)
            summaries[plan.name] = manifest.stage(plan.name)["summary"]
            continue
        directory = stage_dir(config, plan.name)
        print(f"[cascade] {plan.name}: running in {directory}", flush=True)
        digest = config_hash(values)
        manifest.start(plan.name, directory=directory, inputs=plan.inputs, config=values, digest=digest)
        started = time.time()
        summary = plan.run(stage)
        manifest.finish(plan.name, outputs=plan.outputs, wall_s=time.time() - started, summary=_jsonable(summary))
        summaries[plan.name] = summary
    return summaries


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
