"""DropoutNTP stage (offline, SPEC §2): preference pairs for questions without ground truth.

Per prompt, `sampling.n` responses are sampled with the image(s) (InternVL's settings: temperature 0.7, top_k 50).
Each is cut to its first `start_ratio` of space-separated words (`truncate_words`), and the same model continues
that prefix as its own reply *without* the image (`<image>` placeholders removed from the question). The pair is
chosen = the response, rejected = prefix + continuation. An empty response gives no pair; a continuation that
rebuilds the response exactly is kept, as InternVL keeps it; both are counted.

Files in `out_dir`:
- `rollouts/`: a RolloutStore, one record per (prompt, sample): the response (text, tokens, log-probs; unscored:
  reward 0, correct False) with meta["dropout_ntp"] = {start_ratio, prefix, rejected, and the continuation's
  token_ids, logprobs, finish_reason}, or None for an empty response;
- `pairs.jsonl`: MMPR rows in the pairs stage's format (`data_tools.dropout_ntp.dropout_pair_row`), in prompt-file
  order, after the rows of `base_pairs` when set (the cascade sets it to the pairs stage's output, so MPO trains on
  both); rebuilt from the store on every run and written atomically;
- `dropout_ntp_summary.json`.
Rerunning resumes as the rollout stage does: a batch's records are appended once its continuations are done, prompts
with all n records stored are skipped, and samples are seeded by (seed, prompt id, sample index), so a resumed run
writes what an uninterrupted one would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from cascade_rl.config import dump_yaml
from cascade_rl.data import DataError, PromptRow, read_prompts, row_to_request
from cascade_rl.data.reader import iter_raw_records
from cascade_rl.data_tools.dropout_ntp import (
    DropoutSummary,
    check_start_ratio,
    dropout_pair_row,
    image_free_messages,
    truncate_words,
)
from cascade_rl.data_tools.pairs import write_pairs
from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.rollout import Rollout, RolloutRequest, SamplingConfig
from cascade_rl.rollout.factory import ServerSettings
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm
from cascade_rl.stages.rollout import check_sampling_stage, open_store, sampling_engine

# InternVL's DropoutNTP pipeline: one sample, temperature 0.7 (its code; 1.0 in its docs), top_k 50, top_p 1.0,
# 2048 new tokens. Here the responses it truncates are sampled with the same settings.
NTP_SAMPLING = SamplingConfig(n=1, temperature=0.7, top_p=1.0, top_k=50, max_new_tokens=2048, seed=0)


@dataclass(frozen=True)
class DropoutNTPConfig:
    """`cascade-rl dropout-ntp CONFIG [key=value ...]`: pairs for prompts without ground truth (an `answer` column is
    carried into `answer_gt` when present, never needed). `sampling` serves the responses (n per prompt) and their
    continuations (one each); `start_ratio`: the share of a response's words kept as the prefix (InternVL: 0.5);
    `base_pairs`: an MMPR pairs file copied first into pairs.jsonl."""

    model_path: str = ""
    prompts: str = ""
    image_root: str | None = None
    out_dir: str = "runs/dropout_ntp"
    base_pairs: str | None = None
    engine: Literal["hf", "vllm", "server"] = "hf"
    max_tiles: int = 6
    engine_batch_size: int = 8
    prompts_per_batch: int = 8
    system_prompt: str | None = None
    start_ratio: float = 0.5
    sampling: SamplingConfig = field(default_factory=lambda: NTP_SAMPLING)
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    server: ServerSettings = field(default_factory=ServerSettings)  # engine server: vLLM servers serving model_path
    on_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self):
        check_sampling_stage(self)
        check_start_ratio(self.start_ratio)


def run_dropout_ntp(config: DropoutNTPConfig, engine=None) -> dict:
    """Sample and continue responses for every prompt not yet done; write pairs.jsonl and a summary."""
    if engine is None and config.engine == "vllm":
        require_vllm()  # before any work
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, read_summary = read_prompts(config.prompts, config.image_root, on_error=config.on_error)
    base = read_base_pairs(config.base_pairs) if config.base_pairs else []  # a bad file fails before any sampling
    dump_yaml(config, out / "dropout_ntp_config.yaml")
    store, todo = open_store(out / "rollouts", rows, config.sampling.n)
    owned = engine is None
    engine = sampling_engine(config) if owned else engine
    started = time.time()
    for start in tqdm(range(0, len(todo), config.prompts_per_batch), desc="dropout-ntp", unit="batch"):
        store.append(sample_and_continue(engine, todo[start : start + config.prompts_per_batch], config))
    store.close()
    if owned:
        engine.close()  # a vLLM engine frees its device memory before the next stage starts
    records = RolloutStore(out / "rollouts", readonly=True).iter_records()
    pairs, summary = pairs_in_prompt_order(records, rows)
    path = write_pairs(out / "pairs.jsonl", base + pairs)
    result = {
        "prompts_in_file": len(rows) + read_summary.n_skipped,
        "prompts_skipped_bad_input": read_summary.n_skipped,
        "prompts_already_done": len(rows) - len(todo),
        "prompts_sampled": len(todo),
        "responses": summary.n_rows,
        **{key: value for key, value in summary.as_dict().items() if key != "n_rows"},
        "base_pairs": len(base),
        "out": str(path),
        "wall_s": round(time.time() - started, 2),
        "store_repairs": store.repairs,
    }
    (out / "dropout_ntp_summary.json").write_text(json.dumps(result, indent=2))
    if not pairs and not base:
        raise DataError(
            f"{config.prompts}: no DropoutNTP pair could be built: all {summary.n_rows} responses were empty; raise "
            "sampling.max_new_tokens, or check the model answers these prompts",
            reason="no_pairs",
        )
    return result


def sample_and_continue(engine, chunk: list[PromptRow], config: DropoutNTPConfig) -> list[RolloutRecord]:
    """One record per response of the chunk's prompts (n each, with images), each non-empty one with its prefix
    continued without images (one continuation per response, all in one engine call)."""
    requests = [row_to_request(row, config.image_root, system_prompt=config.system_prompt) for row in chunk]
    by_id = {row.id: (row, request) for row, request in zip(chunk, requests)}
    responses = engine.generate(requests, n=config.sampling.n, sampling=config.sampling.params())
    kept = [r for r in responses if r.text.strip()]
    prefixes = [truncate_words(r.text, config.start_ratio) for r in kept]
    asks = [continuation_request(*by_id[r.prompt_id], r.sample_index, p) for r, p in zip(kept, prefixes)]
    continued = engine.generate(asks, n=1, sampling=config.sampling.params()) if asks else []
    extensions = {(r.prompt_id, r.sample_index): (p, c) for r, p, c in zip(kept, prefixes, continued)}
    records = []
    for response in responses:
        row = by_id[response.prompt_id][0]
        record = RolloutRecord.from_rollout(
            response, reward=0.0, correct=False, question=row.question, images=row.images, answer=row.answer
        )
        extension = extensions.get((response.prompt_id, response.sample_index))
        record.meta["dropout_ntp"] = None if extension is None else continuation_meta(*extension, config.start_ratio)
        records.append(record)
    return records


def continuation_request(row: PromptRow, request: RolloutRequest, sample_index: int, prefix: str) -> RolloutRequest:
    """The image-free prompt (the original's system message, the question without `<image>` placeholders) with the
    response's prefix as the start of the reply. Its id names the response, so each continuation has its own seed."""
    system = [message for message in request.messages if message["role"] == "system"]
    messages = system + image_free_messages(row.question)
    return RolloutRequest(f"{row.id}#continue-{sample_index}", messages, assistant_prefix=prefix)


def continuation_meta(prefix: str, continuation: Rollout, start_ratio: float) -> dict[str, Any]:
    """What a record keeps of its continuation: `rejected` is the prefix followed by the continued text."""
    return {
        "start_ratio": start_ratio,
        "prefix": prefix,
        "rejected": continuation.text,
        "token_ids": list(continuation.token_ids),
        "logprobs": list(continuation.logprobs),
        "finish_reason": continuation.finish_reason,
    }


def pairs_in_prompt_order(records, rows: list[PromptRow]) -> tuple[list[dict[str, Any]], DropoutSummary]:
    """Pair rows from the stored records of the prompts in `rows`, in file order, then by sample index."""
    order = {row.id: i for i, row in enumerate(rows)}
    chosen = sorted((r for r in records if r.prompt_id in order), key=lambda r: (order[r.prompt_id], r.sample_index))
    summary, pairs = DropoutSummary(n_rows=len(chosen)), []
    for record in chosen:
        ntp = record.meta.get("dropout_ntp")
        if ntp is None:
            summary.empty_response += 1
            continue
        summary.identical += ntp["rejected"] == record.text
        chosen_meta = {"prompt_id": record.prompt_id, "sample_index": record.sample_index}
        chosen_meta["finish_reason"] = record.finish_reason
        rejected_meta = {key: ntp[key] for key in ("start_ratio", "prefix", "finish_reason")}
        row = dropout_pair_row(
            record.question,
            record.images,
            record.text,
            ntp["rejected"],
            answer=record.answer,
            chosen_meta=chosen_meta,
            rejected_meta=rejected_meta,
        )
        pairs.append(row)
    summary.n_pairs = len(pairs)
    return pairs, summary


def read_base_pairs(path: str) -> list[dict[str, Any]]:
    """Every row of an MMPR pairs file, unchanged; a row that is not a JSON object with chosen and rejected raises
    DataError naming its line."""
    if not Path(path).is_file():
        raise DataError(f"base_pairs={path}: no such file; point it at a pairs .jsonl, or unset it", reason="no_file")
    rows = []
    for source, record in iter_raw_records(path):
        if isinstance(record, DataError):
            raise record
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("chosen", "rejected")):
            raise DataError(
                f"{source}: not an MMPR pair (needs string chosen and rejected); fix the row", reason="bad_pair"
            )
        rows.append(record)
    return rows
