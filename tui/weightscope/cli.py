"""The command line. The terminal app is imported only when it opens; the comparing is done by
the engine's processes (`engine/`), never here.

Exit statuses: 0 nothing differs (or every check holds), 1 something differs (or a check
fails), 2 an input cannot be read or something else went wrong, with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from itertools import islice

from weightscope import __version__

USAGE = """\
weightscope A [B]                 open the terminal app: A and B side by side (or A alone)
weightscope [BASE] RUN_DIR/       the app on a training run: drift of every tensor across the steps
weightscope diff A B [--json]     compare headless: a table, or one JSON document
weightscope diff [BASE] RUN_DIR/  a training run's checkpoints: drift by group and step, and flags
weightscope inspect A [--json]    statistics and a NaN/Inf scan of one checkpoint
weightscope demo                  write a small base/fine-tune pair once and open it
weightscope cache [--clear]       where results are cached, how much, the cap; or empty it"""

EXAMPLES = """\
examples:
  weightscope base/ finetuned/
  weightscope diff base/ finetuned/ --expect-identical 'model.embed_tokens.*' --fail-on-nonfinite
  weightscope inspect model.safetensors --json
  weightscope demo

A and B are checkpoint files or directories (safetensors, PyTorch .bin/.pt, GGUF, DCP,
sharded with an index, a PEFT adapter as B) or Hugging Face ids in the local cache.
Exit status: 0 nothing differs, 1 something differs or a check fails, 2 an input cannot be read.
Run 'weightscope COMMAND --help' for a command's options."""


class Failure(Exception):
    """What went wrong, in one line, for stderr and exit status 2."""


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where statistics are computed (default: auto, CUDA when available)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")


def add_lora_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora-alpha", type=float, metavar="ALPHA",
                        help="for a LoRA adapter saved without adapter_config.json: scaling ALPHA/r (r from the factors)")
    parser.add_argument("--lora-scaling", type=float, metavar="S",
                        help="for a LoRA adapter saved without adapter_config.json: scaling S")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightscope", usage=USAGE, epilog=EXAMPLES,
                                     description="Compare two model checkpoints tensor by tensor.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"weightscope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    diff = commands.add_parser(
        "diff", help="compare A and B headless (exit 0 equal, 1 different, 2 unreadable)",
        description="Compare two checkpoints and print a table or JSON. Exit 0 when every pair is identical "
                    "or value_equal, 1 when something differs, 2 when an input cannot be read or something "
                    "else goes wrong. With an --expect-* or --fail-on-nonfinite check, exit 0 when every check "
                    "holds and 1 when one fails.",
        epilog="example: weightscope diff base/ out/ --expect-identical 'model.embed_tokens.*' --fail-on-nonfinite")
    diff.add_argument("paths", nargs="+", metavar="A B",
                      help="two checkpoints (files or directories); or a training run: BASE RUN_DIR/, RUN_DIR/, "
                           "or three checkpoints or more in order (the first is the reference)")
    diff.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    diff.add_argument("--histograms", action="store_true", help="add histogram bins to the JSON (a second pass)")
    diff.add_argument("--spectrum", action="store_true",
                      help="add the spectrum of each changed pair of 2+ dimensions to the JSON (singular values, "
                           "effective and stable rank)")
    diff.add_argument("--heads", nargs="?", const="", metavar="N[,KV]",
                      help="add each attention tensor's change per head and each fused expert tensor's per expert "
                           "(JSON), and the most changed heads and experts (text); head counts from config.json "
                           "beside the weights or GGUF metadata, or N query and KV key/value heads given here")
    diff.add_argument("--adapter", metavar="ADAPTER",
                      help="check a merge: compare B with A + ΔW of this PEFT LoRA adapter (residuals at rounding "
                           "level when B is A with the adapter merged)")
    add_lora_options(diff)
    diff.add_argument("--atol", type=float, help="absolute tolerance of the 'close' verdict (default: per dtype)")
    diff.add_argument("--rtol", type=float, help="relative tolerance of the 'close' verdict (default: per dtype)")
    diff.add_argument("--expect-identical", action="append", default=[], metavar="GLOB",
                      help="tensors matching GLOB must be bit-identical (repeatable)")
    diff.add_argument("--expect-changed", action="append", default=[], metavar="GLOB",
                      help="tensors matching GLOB must have changed (repeatable)")
    diff.add_argument("--fail-on-nonfinite", action="store_true", help="exit 1 when any tensor holds NaN or Inf")
    diff.add_argument("--fail-on", choices=("error", "warn"),
                      help="exit 1 when the verdict raises a flag of this severity or worse (one stderr line each)")
    add_engine_options(diff)

    inspect = commands.add_parser("inspect", help="statistics and a NaN/Inf scan of one checkpoint",
                                  description="Statistics of every tensor of one checkpoint.",
                                  epilog="example: weightscope inspect model.safetensors --fail-on-nonfinite")
    inspect.add_argument("a", metavar="A", help="checkpoint file or directory")
    inspect.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    inspect.add_argument("--fail-on-nonfinite", action="store_true", help="exit 1 when any tensor holds NaN or Inf")
    add_engine_options(inspect)

    demo = commands.add_parser("demo", help="write a small base/fine-tune pair once and open it",
                               description="Write a small Llama-shaped base and fine-tune into the cache "
                                           "directory (once) and open them in the app.",
                               epilog="example: weightscope demo --print-paths")
    demo.add_argument("--print-paths", action="store_true", help="print the two directories instead of opening them")

    cache = commands.add_parser("cache", help="where scan results are cached, how much, the cap; or empty it",
                                description="Scan results are kept so that a second run answers at once. "
                                            "The least recently used go once the folder passes "
                                            "WEIGHTSCOPE_CACHE_MAX (bytes, or with K/M/G/T; default 2G).")
    cache.add_argument("--clear", action="store_true", help="remove every entry")
    return parser


def build_app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightscope", usage="weightscope A [B] [--select TENSOR] [--heads N[,KV]] [--device auto|cpu|cuda] [--no-cache]\n"
                                  "       weightscope [BASE] RUN_DIR/ [--watch [SECONDS]]   (or A B C ...: a run)\n"
                                  "       weightscope {diff,inspect,demo} ...",
        description="Open A and B side by side in the terminal app (or browse A alone). "
                    "Commands: diff (headless comparison), inspect (one checkpoint), demo.")
    parser.add_argument("paths", metavar="A [B]", nargs="+",
                        help="checkpoint file or directory, and the checkpoint to compare with it; or a training "
                             "run: BASE RUN_DIR/, RUN_DIR/, or three checkpoints or more in order")
    parser.add_argument("--watch", metavar="SECONDS", nargs="?", type=float, const=3.0,
                        help="a run directory: look for new checkpoints every SECONDS (default 3) and add each "
                             "once it is complete")
    parser.add_argument("--heads", metavar="N[,KV]",
                        help="N query and KV key/value heads, for the heads views (default: from config.json "
                             "beside the weights, or GGUF metadata)")
    parser.add_argument("--select", metavar="TENSOR",
                        help="open with the cursor on this tensor (two checkpoints; the run app's `p` uses it)")
    add_lora_options(parser)
    add_engine_options(parser)
    return parser


# The app


def run_app(job, engine=None, select: str | None = None) -> int:
    """The app on `job`, with `engine` where one was started before the job was known, the
    cursor on tensor `select` once the tree is there."""
    from dataclasses import replace

    from weightscope.engine.client import Engine

    job = replace(job, tree=True)
    if engine is None:
        engine = Engine()
    engine.begin(job)  # it reads the headers while Textual loads
    from weightscope.ui.app import WeightscopeApp

    app = WeightscopeApp(job, engine, select=select)
    app.run()
    return app.return_code or 0


def app_run(args):
    """The run the app's paths name (`sources.runs.plan_run`), or None for a pair (then
    `args.a` and `args.b` are set) as before.

    Raises:
        Failure: more than two paths that are no run, a run's option on a pair.
    """
    from weightscope.sources.errors import CheckpointError
    from weightscope.sources.runs import plan_run

    try:
        spec = plan_run(args.paths)
    except CheckpointError as exc:
        raise Failure(str(exc)) from None
    if spec is None:
        if args.watch is not None:
            raise Failure("--watch follows a training run's directory (weightscope BASE RUN_DIR/ --watch)")
        args.a, args.b = args.paths[0], args.paths[1] if len(args.paths) > 1 else None
        return None
    given = [name for name in ("heads", "adapter", "lora_alpha", "lora_scaling", "select") if getattr(args, name, None)]
    if given:
        raise Failure(f"--{given[0].replace('_', '-')} compares two checkpoints; it does not apply to a run")
    return spec


def run_run_app(args, spec, engine=None) -> int:
    """The app on a training run."""
    from weightscope.engine.client import Engine
    from weightscope.engine.protocol import RunJob

    job = RunJob(spec, use_cache=not args.no_cache)
    if engine is None:
        engine = Engine()
    engine.begin(job)
    from weightscope.ui.run_app import RunApp

    app = RunApp(job, engine, paths=args.paths, watch=args.watch)
    app.run()
    return app.return_code or 0


def run_demo(args) -> int:
    from weightscope.demo import write_demo
    from weightscope.engine.protocol import Job

    base, tuned = write_demo()
    if args.print_paths:
        print(base)
        print(tuned)
        return 0
    return run_app(Job(str(base), str(tuned)))


# Headless


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
        sys.stderr.write(f"\r\033[K{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{100 * done / total:5.1f}%  {done / 1e9:.2f}/{total / 1e9:.2f} GB  {rate:.2f} GB/s ")
        sys.stderr.flush()
        self.drawn = True

    def say(self, text: str) -> None:
        """A line in place of the bar until it is drawn ("" clears it)."""
        if self.enabled and (text or self.drawn):
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


class Run:
    """One comparison by the engine, for a command: the catalog, every result, what the scan said."""

    def __init__(self, job, label: str):
        from weightscope.compare.results import ResultTable
        from weightscope.engine import protocol as msg
        from weightscope.engine.client import Engine

        self.msg = msg
        self.engine = Engine(job)
        self.problems: list[str] = []  # failures that did not stop the run: exit 2 at the end
        opened = self.expect(msg.Opened)
        self.catalog = opened.catalog
        self.table = ResultTable(len(self.catalog))
        self.engine.send(msg.Scan())
        progress = Progress(label)
        try:
            if not self.engine.poll(msg.LOOPS_WAIT):  # a first run compiles the loops: said while it waits
                progress.say(msg.LOADING_LOOPS)
            while True:
                message = self.expect(msg.Results, msg.ScanDone, msg.LoopsLoaded)
                if isinstance(message, msg.LoopsLoaded):
                    progress.say("")
                    continue
                if isinstance(message, msg.ScanDone):
                    break
                self.table.add(message.batch)
                self.engine.send(msg.Ack(message.number))
                progress(message.done, message.total)
        finally:
            progress.close()
        self.table.notes.update(message.notes)
        self.table.histograms.update(message.histograms)
        self.table.resized.update(message.resized)
        self.side_notes = message.sides
        self.plan_notes = message.plan_notes

    def expect(self, *kinds):
        """The next message of one of these kinds; a failure along the way is said (fatal: raised)."""
        while True:
            message = self.engine.recv()
            if isinstance(message, self.msg.Failed):
                if message.fatal:
                    raise Failure(message.message)
                self.problems.append(f"{message.job} failed: {message.message}")
                print(f"weightscope: {self.problems[-1]}", file=sys.stderr)
                if self.msg.Failed in kinds:
                    return message
                continue
            if isinstance(message, kinds):
                return message

    def ask(self, kind: str, *args):
        """The engine's answer; None when it failed (said on stderr: the run exits 2)."""
        ticket = self.engine.ask(kind, *args)
        while True:
            message = self.expect(self.msg.Reply, self.msg.Failed)
            if message.ticket == ticket:
                return message.content if isinstance(message, self.msg.Reply) else None

    def close(self) -> None:
        self.engine.close()


def job_of(args, path_b: str | None, **fields):
    from weightscope.compare.options import ScanOptions
    from weightscope.engine.protocol import Job

    options = ScanOptions(getattr(args, "atol", None), getattr(args, "rtol", None), args.device,
                          getattr(args, "histograms", False))
    return Job(args.a, path_b, options=options, use_cache=not args.no_cache, heads=head_counts(args), **fields)


def head_counts(args) -> tuple[int, int] | None:
    """`--heads N[,KV]` as (N, KV); None without counts (`diff --heads` alone reads them from the configs)."""
    text = getattr(args, "heads", None)
    if not text:
        return None
    from weightscope.analysis.heads import parse_override

    try:
        return parse_override(text)
    except ValueError as exc:
        raise Failure(str(exc)) from None


def write(text: str | bytes) -> None:
    if isinstance(text, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(text)
    else:
        print(text)
    sys.stdout.flush()


def write_lines(lines) -> None:
    """Lines to stdout, a few thousand at a time (a 100,000-row table is never whole in memory)."""
    for chunk in iter(lambda: list(islice(lines, 4096)), []):
        write("\n".join(chunk))


RUN_ONLY_PAIRS = ("histograms", "spectrum", "heads", "adapter", "lora_alpha", "lora_scaling", "atol", "rtol",
                  "expect_identical", "expect_changed", "fail_on_nonfinite")


def run_diff(args) -> int:
    from weightscope.sources.errors import CheckpointError
    from weightscope.sources.runs import plan_run

    try:
        spec = plan_run(args.paths)
    except CheckpointError as exc:
        raise Failure(str(exc)) from None
    if spec is not None:
        return run_training(args, spec)
    if len(args.paths) != 2:
        raise Failure(f"{args.paths[0]}: diff compares two checkpoints, or a training run "
                      "(BASE RUN_DIR/, RUN_DIR/, or three checkpoints or more)")
    args.a, args.b = args.paths
    return run_pair(args)


def run_training(args, spec) -> int:
    """`diff` of a training run: groups × steps and the flags, or the JSON document."""
    from weightscope.analysis.runs import failing, groups
    from weightscope.compare.run_results import RunTable
    from weightscope.engine import protocol as msg
    from weightscope.engine.client import Engine
    from weightscope.report.runs import exit_status, text_lines, write_document

    given = [option for option in RUN_ONLY_PAIRS if getattr(args, option) not in (None, False, [])]
    if given:
        raise Failure(f"--{given[0].replace('_', '-')} compares two checkpoints; it does not apply to a run")
    engine = Engine(msg.RunJob(spec, use_cache=not args.no_cache))
    problems = []
    progress = Progress("scanning the run")
    try:
        while True:
            message = engine.recv()
            if isinstance(message, msg.Failed):
                if message.fatal:
                    raise Failure(message.message)
                problems.append(f"{message.job} failed: {message.message}")
                print(f"weightscope: {problems[-1]}", file=sys.stderr)
            elif isinstance(message, msg.RunOpened):
                catalog = message.catalog
                table = RunTable(catalog)
                engine.send(msg.Scan())
            elif isinstance(message, msg.RunResults):
                table.add(message.rows, message.sums, message.same, message.status)
                engine.send(msg.Ack(message.number))
                progress(message.done, message.total)
            elif isinstance(message, msg.RunDone):
                break
    finally:
        progress.close()
        engine.close()
    flags, rolled = message.flags, groups(catalog, table)
    if args.json:
        write_document(write, catalog, table, rolled, flags)
    else:
        write_lines(text_lines(catalog, table, rolled, flags))
    if problems:
        return 2
    if args.fail_on:
        bad = failing(flags, args.fail_on)
        for flag in bad:
            print(f"FLAG {flag.severity} {flag.code}: {flag.message}", file=sys.stderr)
        return 1 if bad else 0
    return exit_status(table)


def run_pair(args) -> int:
    from weightscope.analysis.verdict import text_lines as verdict_lines
    from weightscope.compare.checks import Expectations, failures
    from weightscope.report.diff import exit_status, text_lines, write_document

    if args.spectrum and not args.json:
        raise Failure("--spectrum adds to the JSON document: use it with --json")
    expect = Expectations(args.expect_identical, args.expect_changed, args.fail_on_nonfinite)
    run = Run(job_of(args, args.b, adapter=args.adapter, lora_alpha=args.lora_alpha, lora_scaling=args.lora_scaling),
              "scanning")
    try:
        verdict = run.ask("verdict")
        heads = run.ask("breakdowns") if args.heads is not None else None
        if args.json:
            spectra = run.ask("spectra") if args.spectrum else None
            write_document(write, run.catalog, run.table, args.histograms, spectra, run.side_notes, run.plan_notes,
                           heads=heads, verdict=verdict)
        else:
            if verdict is not None:
                write_lines(iter([*verdict_lines(verdict), ""]))
            write_lines(text_lines(run.catalog, run.table, run.side_notes, run.plan_notes, heads))
    finally:
        run.close()
    if run.problems:
        return 2
    if expect or args.fail_on:
        lines = failures(run.catalog, run.table, expect) if expect else []
        for line in lines:
            print(f"FAIL {line}", file=sys.stderr)
        flags = verdict.failing(args.fail_on) if args.fail_on else []
        for flag in flags:
            print(f"FLAG {flag.severity} {flag.code}: {flag.message}", file=sys.stderr)
        return 1 if lines or flags else 0
    return exit_status(run.catalog, run.table, close_is_equal=args.adapter is not None)


def run_inspect(args) -> int:
    import numpy as np

    from weightscope.compare import columns as c
    from weightscope.report.diff import inspect_lines, nonfinite_text, write_inspect

    run = Run(job_of(args, None), "reading")
    try:
        if args.json:
            write_inspect(write, run.catalog, run.table)
        else:
            write_lines(inspect_lines(run.catalog, run.table))
    finally:
        run.close()
    if run.problems:
        return 2
    if args.fail_on_nonfinite:
        counts = np.nan_to_num(run.table.values[:, [c.FA + c.FNAN, c.FA + c.FPOSINF, c.FA + c.FNEGINF]]).astype(int)
        bad = np.flatnonzero(counts.sum(axis=1) > 0).tolist()
        for i in bad:
            print(f"FAIL {run.catalog.names[i]}: {nonfinite_text(*counts[i])}", file=sys.stderr)
        return 1 if bad else 0
    return 0


def entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def run_cache(args) -> int:
    from weightscope.compare import cache

    if args.clear:
        print(f"removed {entries(cache.evict(0))} from {cache.folder()}")
        return 0
    found = cache.entries()
    size = sum(size for _, size, _ in found)
    print(f"{cache.folder()}: {entries(len(found))}, {size / 1e6:,.1f} MB; cap {cache.limit() / 1e9:g} GB "
          "(WEIGHTSCOPE_CACHE_MAX), least recently used removed first")
    return 0


COMMANDS = {"diff": run_diff, "inspect": run_inspect, "demo": run_demo, "cache": run_cache}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opens_app = bool(argv) and argv[0] not in COMMANDS and not argv[0].startswith("-")
    args = (build_app_parser() if opens_app else build_parser()).parse_args(argv)
    try:
        if opens_app:
            from weightscope.engine.client import Engine

            engine = Engine()  # started first: its imports overlap ours
            try:
                spec = app_run(args)
                if spec is not None:
                    return run_run_app(args, spec, engine)
                job = job_of(args, args.b, lora_alpha=args.lora_alpha, lora_scaling=args.lora_scaling)
            except BaseException:
                engine.close()
                raise
            return run_app(job, engine, args.select)
        return COMMANDS[args.command](args)
    except Failure as exc:
        print(f"weightscope: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `weightscope diff a b | head`: whoever reads has stopped
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: exit 2 and one line, never "differences found"
        if getattr(args, "debug", False):
            raise
        print(f"weightscope: unexpected error: {type(exc).__name__}: {exc} (--debug shows where)", file=sys.stderr)
        return 2
