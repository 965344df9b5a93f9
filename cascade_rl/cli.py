"""The `cascade-rl` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import sys


def _init_tiny(args: argparse.Namespace) -> int:
    from cascade_rl.models import init_tiny

    out = init_tiny(args.out_dir, args.preset, seed=args.seed)
    print(f"wrote a tiny InternVL ({args.preset}, seed {args.seed}) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade-rl", description="Cascade RL post-training for InternVL.")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("init-tiny", help="write a tiny random InternVL checkpoint (offline, for tests and demos)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--preset", default="tiny", choices=["tiny", "internvl3_5_1b_ratio"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_init_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
