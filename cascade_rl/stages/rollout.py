"""Rollout stage (offline, SPEC §2): sample n rollouts per prompt → score → crash-safe store → pass-rate ledger.

`run_rollouts` fills `out_dir/rollouts/` and writes `out_dir/ledger.json`. Rerunning resumes: prompts whose n
samples are stored are skipped, a torn last line is dropped, and because rollouts are seeded per prompt the resumed
run stores what an uninterrupted run would.

Prompt shaping (data/prompting.py): `prompt_instruction` rewrites each question before sampling (InternVL's `en_v2`
boxed-answer instruction with `internvl`); the store, and so the pairs, keep the rewritten question, under the
row's original id. `system_prompt` is the system message of rows that carry none (InternVL3.5 recipes: InternVL's
template default).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from cascade_rl.config import check_choices, dump_yaml
from cascade_rl.data import read_prompts, row_to_request
from cascade_rl.data.prompting import PromptInstruction, with_prompt_instruction
from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.rewards.scoring import CorrectRule, RewardSpec, check_rules, reward_runner, score_rollouts
from cascade_rl.rollout import SamplingConfig
from cascade_rl.rollout.factory import ServerSettings, check_server_settings, make_engine
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm

# InternVL's MMPR pipeline samples at temperature 0.7, top_k 50, top_p 1.0 (SPEC §2); 32 rollouts released, 8 here.
ROLLOUT_SAMPLING = SamplingConfig(n=8, temperature=0.7, top_p=1.0, top_k=50, max_new_tokens=1024, seed=0)


@dataclass(frozen=True)
class RolloutStageConfig:
    """`cascade-rl rollout CONFIG [key=value ...]`. Correctness (pair positives, pass rates): `correct` rules, see
    rewards/scoring.py."""

    model_path: str = ""
    prompts: str = ""
    image_root: str | None = None
    out_dir: str = "runs/offline"
    engine: Literal["hf", "vllm", "server"] = "hf"
    max_tiles: int = 6
    engine_batch_size: int = 8
    prompts_per_batch: int = 8
    system_prompt: str | None = None
    prompt_instruction: PromptInstruction = "none"
    sampling: SamplingConfig = field(default_factory=lambda: ROLLOUT_SAMPLING)
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    server: ServerSettings = field(default_factory=ServerSettings)  # engine server: vLLM servers serving model_path
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    correct: list[CorrectRule] = field(default_factory=lambda: [CorrectRule("math", 1.0)])
    reward_timeout_s: float = 5.0
    reward_memory_mb: float = 2048.0  # per reward worker, beyond its size at start; past it a sample scores None
    on_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self):
        check_sampling_stage(self)
        check_rules(self.rewards, self.correct)


def check_sampling_stage(config) -> None:
    """The checks every offline sampling stage's config (rollout, dropout-ntp, eval) shares: choices, the required
    `model_path` and `prompts`, and the `server:` section when `engine` is server."""
    check_choices(config)
    if not config.model_path or not config.prompts:
        raise ValueError("model_path and prompts are required")
    check_server_settings(config.engine, config.server)


def add_failures(total: dict[str, dict[str, int]], batch: dict[str, dict[str, int]]) -> None:
    """Add one batch's `RewardResult.failures()` to the running `total`, in place."""
    for name, counts in batch.items():
        for kind, count in counts.items():
            total.setdefault(name, {}).setdefault(kind, 0)
            total[name][kind] += count


def instructed(row, instruction: PromptInstruction):
    """The prompt row with its question under `instruction` (`with_prompt_instruction`); id and columns kept."""
    return replace(row, question=with_prompt_instruction(row.question, len(row.images), instruction))


def open_store(directory: Path, rows: list, n: int) -> tuple[RolloutStore, list]:
    """The stage's crash-safe rollout store at `directory`, and the rows whose `n` samples it does not hold yet."""
    store = RolloutStore(directory)
    done = store.done_prompt_ids(n)
    return store, [row for row in rows if row.id not in done]


def sampling_engine(config):
    """The engine an offline sampling stage's config names (`engine`, `model_path`, `max_tiles`,
    `engine_batch_size`, `vllm`, `server`). Rollout servers are not sent weights here: they must serve
    `model_path` themselves (`cascade-rl serve --engine vllm --model MODEL_PATH`), which is checked."""
    engine = make_engine(
        config.engine,
        config.model_path,
        max_tiles=config.max_tiles,
        batch_size=config.engine_batch_size,
        vllm=config.vllm,
        server=config.server,
    )
    if config.engine == "server":
        check_served_model(engine, config.model_path)
    return engine


def check_served_model(engine, model_path: str) -> None:
    """Refuse servers that serve another checkpoint than `model_path` (vLLM reports the path it loaded as the
    model's `root`; compared by directory name, since a server may mount the checkpoint elsewhere)."""
    wanted = Path(model_path).name
    for url, root in engine.served_models().items():
        if Path(root).name != wanted:
            raise ValueError(
                f"rollout server {url} serves {root}, not model_path {model_path}: restart it with "
                f"`cascade-rl serve --engine vllm --model {model_path}` or point server.urls at servers of it"
            )


def run_rollouts(config: RolloutStageConfig, engine=None) -> dict:
    """Sample, score and store rollouts for every prompt not yet done; write the ledger and a summary."""
    if engine is None and config.engine == "vllm":
        require_vllm()  # before any work
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, read_summary = read_prompts(config.prompts, config.image_root, on_error=config.on_error)
    dump_yaml(config, out / "rollout_config.yaml")  # once the input reads: a refused rerun keeps the last one
    rows = [instructed(row, config.prompt_instruction) for row in rows]
    store, todo = open_store(out / "rollouts", rows, config.sampling.n)
    owned = engine is None
    engine = sampling_engine(config) if owned else engine
    sampling = config.sampling.params()
    started, stats = time.time(), {"prompts": len(todo), "rollouts": 0, "tokens": 0}
    failures: dict[str, dict[str, int]] = {}
    with reward_runner(config.rewards, timeout_s=config.reward_timeout_s, memory_mb=config.reward_memory_mb) as runner:
        for start in tqdm(range(0, len(todo), config.prompts_per_batch), desc="rollout", unit="batch"):
            chunk = todo[start : start + config.prompts_per_batch]
            requests = [row_to_request(row, config.image_root, system_prompt=config.system_prompt) for row in chunk]
            rollouts = engine.generate(requests, n=config.sampling.n, sampling=sampling)
            records, result = score_rollouts(runner, rollouts, config.correct, {row.id: row for row in chunk})
            add_failures(failures, result.failures())
            store.append(records)
            stats["rollouts"] += len(records)
            stats["tokens"] += sum(r.num_tokens for r in records)
    store.close()
    if owned:
        engine.close()  # a vLLM engine frees its device memory before the next stage starts
    ledger = PassRateLedger.from_records(RolloutStore(out / "rollouts", readonly=True).iter_records())
    ledger.save(out / "ledger.json")
    summary = {
        "prompts_in_file": len(rows) + read_summary.n_skipped,
        "prompts_skipped_bad_input": read_summary.n_skipped,
        "prompts_already_done": len(rows) - len(todo),
        **stats,
        "wall_s": round(time.time() - started, 2),
        "ledger_prompts": len(ledger),
        "store_repairs": store.repairs,
        "reward_failures": failures,  # scored None (not 0): see the log for the first traceback of each
    }
    (out / "rollout_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
