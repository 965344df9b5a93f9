"""The `cascade-rl` command. Each subcommand is a thin wrapper over a library function.

Stage subcommands take `CONFIG.yaml [key=value ...]`: the YAML fills the stage's config dataclass, dotted
overrides replace single keys (`sampling.n=16`), and a config can also be given by overrides alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path


def _init_tiny(args: argparse.Namespace) -> int:
    from cascade_rl.models import init_tiny

    out = init_tiny(args.out_dir, args.preset, seed=args.seed, dtype=args.dtype)
    print(f"wrote a tiny InternVL ({args.preset}, seed {args.seed}) to {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """--engine vllm: become vLLM's own OpenAI server (rollout/vllm_launch.py); --engine hf: our HTTP server over
    transformers generate, the CPU test double of a dedicated rollout server."""
    if args.engine == "vllm":
        from cascade_rl.rollout.vllm_launch import ServeSettings, exec_server

        extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
        exec_server(
            ServeSettings(
                args.model,
                host=args.host,
                port=args.port,
                max_tiles=args.max_tiles,
                dtype=args.dtype,
                gpu_memory_utilization=args.gpu_memory_utilization,
                max_model_len=args.max_model_len,
                kv_cache_gib=args.kv_cache_gib,
                enforce_eager=args.enforce_eager,
                weight_backend=args.weight_backend,
                extra=extra,
            )
        )
    from cascade_rl.rollout.factory import make_engine
    from cascade_rl.rollout.server import RolloutServer

    engine = make_engine("hf", args.model, max_tiles=args.max_tiles, batch_size=args.batch_size)
    limit = int(args.max_body_mb * 2**20)
    server = RolloutServer(
        engine, engine.model, host=args.host, port=args.port, model_path=args.model, max_body_bytes=limit
    )
    print(f"serving {args.model} (hf) on {server.url}", flush=True)
    server.serve_forever()
    return 0


def _stage(stage):
    """A subcommand that builds the stage's config from YAML and overrides, and runs the stage with it."""

    def run(args: argparse.Namespace) -> int:
        from cascade_rl.config import load_config

        config_cls, run_stage = stage.load()
        source, overrides = _split_source(args.config, args.overrides)
        summary = run_stage(load_config(config_cls, source, overrides))
        print(json.dumps(summary, indent=2, default=str))
        return 0

    return run


def _cascade_config(args: argparse.Namespace):
    from cascade_rl.config import load_config
    from cascade_rl.stages.cascade import CascadeConfig

    source, overrides = _split_source(args.recipe, args.overrides)
    return load_config(CascadeConfig, source, overrides)


def _run(args: argparse.Namespace) -> int:
    from cascade_rl.stages.cascade import run_cascade

    summaries = run_cascade(_cascade_config(args))
    print(json.dumps(summaries.get("eval", {}), indent=2, default=str))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from cascade_rl.rollout.vllm_support import EngineUnavailable, require_vllm
    from cascade_rl.stages.cascade import plan_stages, uses_vllm, validate

    config = _cascade_config(args)
    built = validate(config)
    names = [plan.name for plan in plan_stages(config)]
    print(f"{args.recipe}: ok; stages {' → '.join(names)}")
    if args.gpus is not None or args.gpu_memory is not None:
        _memory_plan(args, config, list(zip(names, built)))
    if uses_vllm(built):
        try:
            require_vllm()
        except EngineUnavailable as err:
            print(f"note: not runnable on this machine as it is: {err}")
    return 0


def _memory_plan(args: argparse.Namespace, config, stages: list) -> None:
    """Print the recipe's memory plan (cascade_rl/plan.py); refuse one that does not fit."""
    from cascade_rl.config import ConfigError
    from cascade_rl.plan import plan_memory

    if args.gpu_memory is None:
        raise ConfigError("--gpus needs --gpu-memory GIB (memory per GPU, e.g. 80) to plan memory")
    plan = plan_memory(config.model_path, config.name, stages, args.gpus or 1, args.gpu_memory)
    print("\n".join(plan.lines()))
    if not plan.fits:
        raise ConfigError(f"{args.recipe}: the memory plan does not fit:\n{plan.refusal()}")


def _print_config(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from cascade_rl.stages.cascade import plan_stages

    config = _cascade_config(args)
    resolved = {}
    for plan in plan_stages(config):
        built = plan.build()
        resolved[plan.name] = dataclasses.asdict(built)
        if hasattr(built, "resolved_settings"):  # the eval suite: its settings with their defaults
            resolved[plan.name]["settings"] = built.resolved_settings()
    print(yaml.safe_dump({"cascade": dataclasses.asdict(config), "stages": resolved}, sort_keys=False))
    return 0


def recipe_dirs() -> list[Path]:
    """./recipes, then the recipes/ beside the installed package (a source checkout)."""
    here = Path(__file__).resolve().parents[1] / "recipes"
    return [d for d in dict.fromkeys([Path.cwd() / "recipes", here]) if d.is_dir()]


def _ls(args: argparse.Namespace) -> int:
    for directory in recipe_dirs():
        for path in sorted(directory.rglob("*.yaml")):
            if "deepspeed" not in path.parts:
                first = path.read_text().splitlines()[0].lstrip("# ").strip() if path.stat().st_size else ""
                print(f"{path}  {first}")
    return 0


def _split_source(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, list(overrides)


def _add_serve(sub) -> None:
    from typing import get_args

    from cascade_rl.rollout.vllm_support import ServingDtype

    serve = sub.add_parser(
        "serve", help="a rollout server on dedicated devices: vLLM's own server (default) or the HF test double"
    )
    serve.add_argument("--model", required=True, help="Hugging Face format checkpoint directory")
    serve.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 exposes it to the network")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    serve.add_argument("--max-tiles", type=int, default=12)
    serve.add_argument("--batch-size", type=int, default=16, help="sequences per generate batch (hf engine)")
    serve.add_argument("--max-body-mb", type=float, default=16384, help="largest request body (hf engine), else 413")
    vllm = serve.add_argument_group("vllm engine")
    vllm.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of the GPU vLLM may take")
    vllm.add_argument(
        "--dtype", default="auto", choices=get_args(ServingDtype), help="precision vLLM serves in (auto: config.json)"
    )
    vllm.add_argument("--weight-backend", choices=["nccl", "gloo"], help="weight transfer (default: nccl with CUDA)")
    vllm.add_argument("--max-model-len", type=int, default=0, help="0: the model's own")
    vllm.add_argument("--kv-cache-gib", type=float, default=0.0, help="KV cache size outright (0: from utilization)")
    vllm.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compilation")
    vllm.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: passed to vLLM unchanged")
    serve.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    from cascade_rl.models.tiny import TINY_PRESETS
    from cascade_rl.stages import STAGES

    parser = argparse.ArgumentParser(prog="cascade-rl", description="Cascade RL post-training for InternVL.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a known error too")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("init-tiny", help="write a tiny random InternVL checkpoint (offline, for tests and demos)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--preset", default="tiny", choices=sorted(TINY_PRESETS))
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="weight precision (default fp32)")
    tiny.set_defaults(func=_init_tiny)
    for name, func, help_text in [
        ("run", _run, "run a cascade recipe (skips completed stages, resumes the interrupted one)"),
        ("validate", _validate, "check a recipe without loading a model"),
        ("print-config", _print_config, "show a recipe's resolved config, stage by stage"),
    ]:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("recipe", help="recipe YAML")
        command.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        command.set_defaults(func=func)
        if name == "validate":
            command.add_argument("--gpus", type=int, help="GPUs the trainers run on (memory plan; default 1)")
            command.add_argument("--gpu-memory", type=float, help="GiB per GPU: print a memory plan per stage")
    sub.add_parser("ls", help="list the recipes").set_defaults(func=_ls)
    _add_serve(sub)
    for stage in STAGES.values():
        command = sub.add_parser(stage.name, help=stage.help)
        command.add_argument("config", nargs="?", help="YAML config file")
        command.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        command.set_defaults(func=_stage(stage))
    return parser


def main(argv: list[str] | None = None) -> int:
    from cascade_rl.config import ConfigError
    from cascade_rl.data import DataError
    from cascade_rl.models.io import CheckpointError
    from cascade_rl.rollout.base import EngineUnavailable

    args = build_parser().parse_args(argv)
    try:  # a known error class is one line (the traceback with --debug); anything else is a bug: its traceback shows
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, EngineUnavailable) as err:
        if args.debug:
            traceback.print_exc()
        print(f"cascade-rl {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
