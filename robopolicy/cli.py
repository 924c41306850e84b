"""The one command line: ``robopolicy <verb> ...``.

Each verb lives in its own module as ``add_parser(subparsers)``, which registers a thin ``run``
over library functions. Heavy imports happen inside ``run`` so ``--help`` stays fast. Errors a
user can cause (:class:`RobopolicyError`) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from robopolicy.errors import RobopolicyError

VERBS = {
    "data": "robopolicy.data.cli",
    "sim": "robopolicy.sim.cli",
    "train": "robopolicy.train",
    "eval": "robopolicy.evaluate_cli",
    "finetune": "robopolicy.rl.loop",
    "teleop": "robopolicy.teleop.cli",
    "deploy": "robopolicy.real.deploy",
    "bench": "robopolicy.bench",
    "quickstart": "robopolicy.quickstart",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robopolicy",
        description="Collect demonstrations, train action models, fine-tune and deploy them.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse gives positionals that come after options (`finetune CKPT --task T k=v`) back
    # as unknown: a verb that sets ``extra_overrides`` takes them as its key=value overrides
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "extra_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args) or 0
    except RobopolicyError as exc:
        print(f"robopolicy {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robopolicy {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
