"""Drive one stage from Python: MPO on a handful of preference pairs, with a tiny InternVL built in-process.

Run: python examples/one_stage_from_python.py [OUT_DIR]

The stage's `optim` section starts from its own defaults (MPO_OPTIM: InternVL's released settings);
`dataclasses.replace` changes the keys this toy run needs and keeps the rest.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from cascade_rl.data_tools.synthetic import write_synthetic_dataset
from cascade_rl.models import init_tiny, load_policy
from cascade_rl.stages.mpo import MPO_OPTIM, MPOConfig, run_mpo


def main(out: Path) -> dict:
    data = write_synthetic_dataset(out / "data", 8, seed=0, split_name="rows", kinds=("count",))
    rows = [json.loads(line) for line in open(data["path"])]
    pairs = out / "pairs.jsonl"
    with open(pairs, "w") as f:  # chosen: the right count; rejected: a wrong one
        for row in rows:
            wrong = (int(row["answer"]) + 1) % 5
            pair = {
                "image": row["image"],
                "question": row["question"],
                "chosen": row["response"],
                "rejected": f"Answer: \\boxed{{{wrong}}}",
            }
            f.write(json.dumps(pair) + "\n")
    checkpoint = init_tiny(out / "base")
    config = MPOConfig(
        model_path=str(checkpoint),
        pairs=str(pairs),
        image_root=str(out / "data"),
        out_dir=str(out / "mpo"),
        optim=replace(MPO_OPTIM, lr=1e-3, max_steps=4, per_device_batch=2),
        max_tiles=1,
    )
    summary = run_mpo(config)
    model, processor = load_policy(summary["final"])  # a plain Hugging Face checkpoint
    print(json.dumps(summary, indent=2), type(model).__name__)
    return summary


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example_mpo"))
