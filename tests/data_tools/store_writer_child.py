"""Child process for the RolloutStore kill test (not a test module).

usage: store_writer_child.py STORE_DIR N_PROMPTS N_SAMPLES HANG_AFTER

Writes deterministic fake rollouts (a pure function of prompt id and sample index) for every prompt the store
does not hold yet, 3 prompts per engine batch, each batch appended in two halves so that the first half ends
inside a prompt. After each append it prints "appended <k>"; after append number HANG_AFTER (0: never) it
hangs, waiting for the parent's SIGKILL, so the kill lands at a known point with a prompt half-stored.
"""

import sys
import time

from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.data_tools.store import RolloutStore


def fake_record(prompt_id: str, index: int) -> RolloutRecord:
    n_tokens = 1 + (7 * index + int(prompt_id[1:])) % 5
    return RolloutRecord(
        prompt_id=prompt_id,
        sample_index=index,
        text=f"{prompt_id} says {index}\n(ü)",
        token_ids=[100 * index + k for k in range(n_tokens)],
        logprobs=[-0.1 * (k + 1) for k in range(n_tokens)],
        finish_reason="length" if index == 3 else "stop",
        reward=1.0 if index % 2 == 0 else 0.0,
        correct=index % 2 == 0,
        rewards={"accuracy": float(index % 2 == 0), "format": None},
        question=f"question of {prompt_id}",
        images=[f"{prompt_id}.png"],
        answer="A",
    )


def main(store_dir: str, n_prompts: int, n: int, hang_after: int) -> None:
    prompts = [f"p{k:03d}" for k in range(n_prompts)]
    with RolloutStore(store_dir) as store:
        done = store.done_prompt_ids(n)
        todo = [p for p in prompts if p not in done]
        appended = 0
        for start in range(0, len(todo), 3):
            batch = [fake_record(p, i) for p in todo[start : start + 3] for i in range(n)]
            cut = n + 1  # the first half holds one whole prompt and the first sample of the next
            for half in (batch[:cut], batch[cut:]):
                store.append(half)
                appended += 1
                print(f"appended {appended}", flush=True)
                if appended == hang_after:
                    time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
