"""``robopolicy bench``: the benchmarks, one JSON line each, every rate with a reference
measured in the same run (absolute times drift on shared machines; ratios do not)."""

from __future__ import annotations

import importlib

# area -> module with run(workdir, quick) -> list of result dicts
BENCHMARKS = {"data": "robopolicy.data.benchmark", "sim": "robopolicy.sim.benchmark",
              "models": "robopolicy.policies.benchmark", "teleop": "robopolicy.teleop.benchmark",
              "rl": "robopolicy.rl.benchmark", "engine": "robopolicy.engine.benchmark"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run benchmarks and print JSON lines")
    p.add_argument("areas", nargs="*", choices=[*BENCHMARKS, []], metavar="AREA",
                   help=f"which to run (default: all of {', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--workdir", help="where scratch stores go (default: the temp dir)")
    p.set_defaults(run=main)


def main(args) -> int:
    for area in args.areas or BENCHMARKS:
        importlib.import_module(BENCHMARKS[area]).run(workdir=args.workdir, quick=args.quick)
    return 0
