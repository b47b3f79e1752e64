"""A worker: takes tasks one at a time from a pipe, does them, and sends back what came of each.

The engine has one worker in a thread of its own process, which shares the engine's open
checkpoints and so takes what a person waits for (a tensor's figures and histograms, its
spectrum, its change map); and one worker process per further core, which takes units of
the scan. A worker process reads span units straight from the files and opens the
checkpoints itself only if a task needs their sources (quantized GGUF, LoRA, DCP, ...).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from weightscope.engine.protocol import Cancel, Job

NICE = 5  # the engine yields the CPU to the app's own process when both want it
HELPER_NICE = 15  # worker processes (the scan's units) yield it to both: the engine answers what a person waits for


FAULTS = {kind for kind in os.environ.get("WEIGHTSCOPE_FAULT", "").split(",") if kind}


def fault(kind: str) -> None:
    """Fail on purpose where the tests ask for it (`WEIGHTSCOPE_FAULT=detail,export`), to show
    that every kind of work that fails is said to the user."""
    if kind in FAULTS:
        raise RuntimeError(f"injected fault in {kind}")


SLOW_LOOPS = 3.0  # seconds `WEIGHTSCOPE_FAULT=slow-loops` holds the loops back: the tests' first run


def load_loops() -> Done:
    """Load the compiled loops a worker runs (a first run compiles them: up to a minute);
    what says so to the engine."""
    if "slow-loops" in FAULTS:
        import time

        time.sleep(SLOW_LOOPS)
    from weightscope.compare import kernels  # noqa: F401  (the import loads the compiled loops)
    from weightscope.compare import split_kernels

    split_kernels.load()  # the heads view's loop too (a few ms from the cache): its first answer waits for nothing
    return Done(0, "loaded")


@dataclass(frozen=True)
class Task:
    """One thing for a worker to do: `kind` names it ("unit", "run_unit", "detail", "histograms", "resized",
    "spectrum", "map", "heads")."""

    ticket: int
    kind: str
    args: tuple = ()
    options: object = None  # the job's `ScanOptions`, with the device the engine resolved


@dataclass(frozen=True)
class Done:
    ticket: int
    kind: str
    content: object = None
    error: str | None = None  # why it failed (one line); None when it did not
    cancelled: bool = False


class Opened:
    """The checkpoints a job compares, opened when a task first needs their sources."""

    def __init__(self, job: Job, opened: tuple | None = None):
        self.job = job
        self._opened = opened

    def __call__(self) -> tuple:
        """(A, B); B is A when one checkpoint is browsed alone."""
        if self._opened is None:
            from weightscope.engine.opening import open_job

            a, b, *_ = open_job(self.job)
            self._opened = (a, b or a)
        return self._opened


def execute(task: Task, opened: Opened, should_cancel: Callable[[], bool]) -> object:
    """Do one task and return what came of it.

    Raises:
        stats.Cancelled: `should_cancel()` turned true.
    """
    from weightscope.compare import scan

    options = task.options or opened.job.options
    fault("scan" if task.kind == "unit" else task.kind)
    if task.kind == "unit":
        (unit,) = task.args
        return scan.run_unit(unit, opened, options, should_cancel)
    if task.kind == "run_unit":  # a training run's: plain spans of every checkpoint, read here
        from weightscope.compare.run_scan import run_unit

        return run_unit(task.args[0], should_cancel)
    job: scan.PairJob = task.args[0]
    if task.kind == "detail":  # (job, and whether to work out a resized pair's common and added parts)
        return scan.compare_pair(job, opened, options, should_cancel, resized=len(task.args) > 1 and task.args[1])
    if task.kind == "histograms":
        return scan.pair_histograms(job, opened, task.args[1], should_cancel)
    if task.kind == "resized":
        from weightscope.compare import overlap

        return overlap.compare(job, opened, options, should_cancel)
    pair = job.pair
    if task.kind == "heads":
        from weightscope.analysis.heads import pair_breakdown

        same = pair.a is not None and pair.b is not None and pair.a.shape == pair.b.shape
        sides = tuple(scan.side_bytes(job, side, opened) for side in (0, 1)) if same else (None, None)
        return pair_breakdown(pair.name, (pair.a and pair.a.shape, pair.b and pair.b.shape),
                              (pair.a and pair.a.dtype, pair.b and pair.b.dtype), sides, task.args[1], should_cancel)
    if task.kind == "map" and pair.a is not None and pair.b is not None and pair.a.shape != pair.b.shape:
        from weightscope.analysis.change_map import pooled_resized
        from weightscope.compare.overlap import dimension

        dim = dimension(pair.a.shape, pair.b.shape, pair.a.dtype, pair.b.dtype)
        if dim is None:
            return None
        _, rows, cols = task.args  # a resized pair: over the bigger shape, the added part marked
        return pooled_resized(scan.side_bytes(job, 0, opened), pair.a.dtype, pair.a.shape,
                              scan.side_bytes(job, 1, opened), pair.b.dtype, pair.b.shape, dim, rows, cols,
                              should_cancel)
    if pair.a is None or pair.b is None or pair.a.shape != pair.b.shape:
        return None
    sides = [scan.side_bytes(job, side, opened) for side in (0, 1)]
    if task.kind == "spectrum":
        from weightscope.analysis.spectrum import pair_spectrum

        a, b = opened() if job.needs_sources else (None, None)
        rows = task.args[1] if len(task.args) > 1 else None  # the verdict's sample: a block of leading rows
        return pair_spectrum(a, b, pair, should_cancel=should_cancel, raw_a=sides[0], raw_b=sides[1], rows=rows)
    if task.kind == "map":
        from weightscope.analysis.change_map import matrix_shape, pooled

        _, rows, cols = task.args
        return pooled(sides[0], pair.a.dtype, sides[1], pair.b.dtype, matrix_shape(pair.a.shape), rows, cols,
                      should_cancel)
    raise ValueError(f"no such task: {task.kind}")


class ProcessPipe:
    """A worker process's end of its pipe to the engine: tasks in, `Done`s out, and `Cancel`s
    that may arrive while a task runs (looked for between its chunks)."""

    def __init__(self, conn):
        self.conn = conn
        self.cancelled_tickets: set[int] = set()

    def recv(self):
        while True:
            message = self.conn.recv()
            if isinstance(message, Cancel):
                self.cancelled_tickets.add(message.ticket)
                continue
            return message

    def send(self, done: Done) -> None:
        self.conn.send(done)

    def cancelled(self, ticket: int) -> bool:
        while self.conn.poll():
            message = self.conn.recv()
            if not isinstance(message, Cancel):
                raise EOFError("the engine sent a task while another ran")
            self.cancelled_tickets.add(message.ticket)
        return ticket in self.cancelled_tickets


def serve(pipe, opened: Opened) -> None:
    """Take tasks from `pipe` until it closes; answer each with a `Done`."""
    from weightscope.compare.stats import Cancelled, Unsupported
    from weightscope.sources.checkpoint import TensorUnreadable
    from weightscope.sources.errors import CheckpointError, one_line

    while True:
        try:
            task = pipe.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return

        def should_cancel(ticket: int = task.ticket) -> bool:
            return pipe.cancelled(ticket)

        try:
            done = Done(task.ticket, task.kind, execute(task, opened, should_cancel))
        except Cancelled:
            done = Done(task.ticket, task.kind, cancelled=True)
        except (CheckpointError, TensorUnreadable, Unsupported, ValueError) as exc:
            done = Done(task.ticket, task.kind, error=one_line(str(exc)))
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001  (a bug: said in one line, with where it happened)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            done = Done(task.ticket, task.kind, error=one_line(
                f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}:{where.lineno})"))
        try:
            pipe.send(done)
        except (BrokenPipeError, OSError):
            return


def open_first(weights: str) -> Done:
    """B's weights opened for the engine (`opening.open_weights`), or why not."""
    from weightscope.engine.opening import open_weights

    try:
        return Done(0, "open", open_weights(weights))
    except Exception as exc:  # noqa: BLE001  (the engine opens them itself, and says what is wrong)
        return Done(0, "open", error=str(exc))


def leave_with(engine: int) -> None:
    """End this process as soon as the engine (its process id) that started it has gone. A worker
    reads end-of-file from its pipe between tasks, but not while its compiled loops load: on a
    first start they compile for half a minute, which went on alone after the app had quit."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == engine:
            time.sleep(0.2)
        os._exit(0)  # (a compiled loop's cache file is written whole or not at all)

    threading.Thread(target=watch, name="weightscope-engine-watch", daemon=True).start()


def main(fd: int, engine: int, opens_b: bool = False) -> None:
    """A worker process's life: the job from the engine (process `engine`; with B's weights to
    open first, when `opens_b`: at full speed, the engine waits for them), then its tasks, at a
    lower priority from then on: the app draws its screens first."""
    from multiprocessing.connection import Connection

    leave_with(engine)
    if not opens_b:
        os.nice(HELPER_NICE)
    conn = Connection(fd)
    try:
        job, weights = conn.recv()  # (weights: B's, or None)
        if weights is not None:
            conn.send(open_first(weights))
    except (EOFError, OSError):
        return
    if opens_b:
        os.nice(HELPER_NICE)
    try:
        conn.send(load_loops())
    except (BrokenPipeError, OSError):
        return
    serve(ProcessPipe(conn), Opened(job))


if __name__ == "__main__":
    import sys

    # Run as the module itself, not as `__main__`: what it sends is pickled by module name, and
    # `__main__` is another program in the process that reads it.
    from weightscope.engine.worker import main as worker_main

    worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["opens-b"])
