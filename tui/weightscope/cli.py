"""The command line. The terminal app and torch are imported only when a command needs them."""

from __future__ import annotations

import argparse
import json
import sys
import time

from weightscope import __version__


def add_scan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where statistics are computed (default: auto, CUDA when available)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    parser.add_argument("--fail-on-nonfinite", action="store_true", help="exit 1 when any tensor holds NaN or Inf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightscope", description="Compare two model checkpoints tensor by tensor.")
    parser.add_argument("--version", action="version", version=f"weightscope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    diff = commands.add_parser(
        "diff", help="compare A and B headless (exit 0 equal, 1 different, 2 unreadable)",
        description="Compare two checkpoints and print a table or JSON. Exit 0 when every pair is identical "
                    "or value_equal, 1 when something differs, 2 when an input cannot be opened. With an "
                    "--expect-* or --fail-on-nonfinite check, exit 0 when every check holds and 1 when one fails.")
    diff.add_argument("a", metavar="A", help="checkpoint file or directory")
    diff.add_argument("b", metavar="B", help="checkpoint file or directory")
    diff.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    diff.add_argument("--histograms", action="store_true", help="add histogram bins to the JSON (a second pass)")
    diff.add_argument("--spectrum", action="store_true",
                      help="add the spectrum of each changed pair of 2+ dimensions to the JSON (singular values, "
                           "effective and stable rank)")
    diff.add_argument("--adapter", metavar="ADAPTER",
                      help="check a merge: compare B with A + ΔW of this PEFT LoRA adapter (residuals at rounding "
                           "level when B is A with the adapter merged)")
    diff.add_argument("--lora-alpha", type=float, metavar="ALPHA",
                      help="for a LoRA adapter saved without adapter_config.json: scaling ALPHA/r (r from the factors)")
    diff.add_argument("--lora-scaling", type=float, metavar="S",
                      help="for a LoRA adapter saved without adapter_config.json: scaling S")
    diff.add_argument("--atol", type=float, help="absolute tolerance of the 'close' verdict (default: per dtype)")
    diff.add_argument("--rtol", type=float, help="relative tolerance of the 'close' verdict (default: per dtype)")
    diff.add_argument("--expect-identical", action="append", default=[], metavar="GLOB",
                      help="tensors matching GLOB must be bit-identical (repeatable)")
    diff.add_argument("--expect-changed", action="append", default=[], metavar="GLOB",
                      help="tensors matching GLOB must have changed (repeatable)")
    add_scan_options(diff)

    inspect = commands.add_parser("inspect", help="statistics and a NaN/Inf scan of one checkpoint",
                                  description="Statistics of every tensor of one checkpoint.")
    inspect.add_argument("a", metavar="A", help="checkpoint file or directory")
    inspect.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    add_scan_options(inspect)

    demo = commands.add_parser("demo", help="write a small base/fine-tune pair once and open it",
                               description="Write a small Llama-shaped base and fine-tune into the cache "
                                           "directory (once) and open them in the app.")
    demo.add_argument("--print-paths", action="store_true", help="print the two directories instead of opening them")
    return parser


def build_app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightscope", usage="weightscope A [B] [--device auto|cpu|cuda] [--no-cache]\n"
                                  "       weightscope {diff,inspect,demo} ...",
        description="Open A and B side by side in the terminal app (or browse A alone). "
                    "Commands: diff (headless comparison), inspect (one checkpoint), demo.")
    parser.add_argument("a", metavar="A", help="checkpoint file or directory")
    parser.add_argument("b", metavar="B", nargs="?", help="checkpoint to compare with A")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where statistics are computed (default: auto)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    return parser


def run_app(path_a: str, path_b: str | None, device: str = "auto", use_cache: bool = True) -> int:
    from weightscope.compare.device import resolve
    from weightscope.ui.app import WeightscopeApp

    if device == "cuda":  # asked for by name: fail now, with exit status 2, if it is not there
        resolve(device)
    app = WeightscopeApp(path_a, path_b, device, use_cache=use_cache)
    app.run()
    return app.return_code or 0


def run_demo(args) -> int:
    from weightscope.demo import write_demo

    base, tuned = write_demo()
    if args.print_paths:
        print(base)
        print(tuned)
        return 0
    return run_app(base, tuned)


class Progress:
    """A progress bar on stderr, drawn only on a terminal and only for runs longer than a moment."""

    def __init__(self, label: str):
        self.label = label
        self.start = time.monotonic()
        self.enabled = sys.stderr.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.start
        if not self.enabled or elapsed < 0.5 or not total:
            return
        width = 30
        filled = int(width * done / total)
        rate = done / elapsed / 1e9
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{100 * done / total:5.1f}%  {done / 1e9:.2f}/{total / 1e9:.2f} GB  {rate:.2f} GB/s ")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run_diff(args) -> int:
    from weightscope.compare import cache
    from weightscope.sources.pair import open_merge_check, open_pair
    from weightscope.compare.align import align
    from weightscope.compare.checks import Expectations, failures
    from weightscope.compare.device import resolve
    from weightscope.analysis.lora_notes import annotate
    from weightscope.report.diff import exit_status, to_json, to_text
    from weightscope.compare.scan import ScanOptions, scan
    from weightscope.analysis.spectrum import spectra

    if args.spectrum and not args.json:
        raise ValueError("--spectrum adds to the JSON document: use it with --json")
    options = ScanOptions(args.atol, args.rtol, resolve(args.device), args.histograms)
    expect = Expectations(args.expect_identical, args.expect_changed, args.fail_on_nonfinite)
    a, b = (open_pair(args.a, args.b, args.lora_alpha, args.lora_scaling) if args.adapter is None
            else open_merge_check(args.a, args.b, args.adapter))
    with a, b:
        alignment = align(a, b)
        given = args.lora_alpha is not None or args.lora_scaling is not None  # the cache key knows only files
        key = None if args.no_cache or given else cache.key(a, b, options)
        results = cache.load(key, alignment) if key else None
        if results is None:
            progress = Progress("scanning")
            try:
                results = scan(alignment, a, b, options, progress)
            finally:
                progress.close()
            if key:
                cache.save(key, results)
        results = annotate(a, b, results)
        if args.json:
            found = spectra(a, b, results) if args.spectrum else None
            json.dump(to_json(a, b, alignment, results, args.histograms, found), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(to_text(a, b, alignment, results))
    if expect:
        lines = failures(results, expect)
        for line in lines:
            print(f"FAIL {line}", file=sys.stderr)
        return 1 if lines else 0
    return exit_status(results, close_is_equal=args.adapter is not None)


def run_inspect(args) -> int:
    from weightscope.compare.checks import nonfinite_text
    from weightscope.compare.device import resolve
    from weightscope.sources.discover import open_checkpoint
    from weightscope.report.diff import inspect_json, inspect_text
    from weightscope.compare.scan import inspect

    with open_checkpoint(args.a) as checkpoint:
        progress = Progress("reading")
        try:
            results = inspect(checkpoint, resolve(args.device), progress)
        finally:
            progress.close()
        if args.json:
            json.dump(inspect_json(checkpoint, results), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(inspect_text(checkpoint, results))
    bad = [(info, side) for info, side, _ in results if side and side.nonfinite]
    if args.fail_on_nonfinite:
        for info, side in bad:
            print(f"FAIL {info.name}: {nonfinite_text(side)}", file=sys.stderr)
        return 1 if bad else 0
    return 0


COMMANDS = {"diff": run_diff, "inspect": run_inspect, "demo": run_demo}


def main(argv: list[str] | None = None) -> int:
    from weightscope.sources.errors import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    opens_app = bool(argv) and argv[0] not in COMMANDS and not argv[0].startswith("-")
    args = (build_app_parser() if opens_app else build_parser()).parse_args(argv)
    try:
        if opens_app:
            return run_app(args.a, args.b, args.device, not args.no_cache)
        return COMMANDS[args.command](args)
    except CheckpointError as exc:
        print(f"weightscope: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # options that cannot be honoured, e.g. --device cuda without CUDA
        print(f"weightscope: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `weightscope diff a b | head`
        return 1
    except KeyboardInterrupt:
        return 130
