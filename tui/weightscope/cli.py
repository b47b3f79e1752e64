"""The command line. The terminal app and torch are imported only when a command needs them."""

from __future__ import annotations

import argparse
import json
import sys

from weightscope import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightscope", description="Compare two model checkpoints tensor by tensor.")
    parser.add_argument("--version", action="version", version=f"weightscope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    diff = commands.add_parser("diff", help="compare A and B headless (exit 0 equal, 1 different, 2 unreadable)",
                               description="Compare two checkpoints and print a table or JSON.")
    diff.add_argument("a", metavar="A", help="checkpoint file or directory")
    diff.add_argument("b", metavar="B", help="checkpoint file or directory")
    diff.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return parser


def run_diff(args) -> int:
    from weightscope.core.align import align
    from weightscope.core.discover import open_checkpoint
    from weightscope.core.report import exit_status, to_json, to_text
    from weightscope.core.scan import scan

    with open_checkpoint(args.a) as a, open_checkpoint(args.b) as b:
        alignment = align(a, b)
        results = scan(alignment, a, b)
        if args.json:
            json.dump(to_json(a, b, alignment, results), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(to_text(a, b, alignment, results))
        return exit_status(results)


def main(argv: list[str] | None = None) -> int:
    from weightscope.core.errors import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return run_diff(args)
    except CheckpointError as exc:
        print(f"weightscope: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `weightscope diff a b | head`
        return 1
    except KeyboardInterrupt:
        return 130
