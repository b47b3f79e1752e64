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

from weightscope.engine.protocol import Job

NICE = 5  # workers yield the CPU to the app's own process when both want it
SLOTS = 4096  # cancellation slots shared by the engine and its workers (tickets modulo this)


@dataclass(frozen=True)
class Task:
    """One thing for a worker to do: `kind` names it ("unit", "detail", "spectrum", "map")."""

    ticket: int
    kind: str
    args: tuple = ()


@dataclass(frozen=True)
class Done:
    ticket: int
    kind: str
    content: object = None
    error: str | None = None  # why it failed (one line); None when it did not
    cancelled: bool = False


class Opened:
    """The checkpoints a job compares, their alignment and catalog, opened when first needed."""

    def __init__(self, job: Job, opened: tuple | None = None):
        self.job = job
        self._opened = opened

    def get(self) -> tuple:
        """(A, B, catalog); B is A when one checkpoint is browsed alone."""
        if self._opened is None:
            from weightscope.engine.opening import open_job

            a, b, alignment, catalog = open_job(self.job)
            self._opened = (a, b or a, catalog)
        return self._opened


def execute(task: Task, opened: Opened, should_cancel: Callable[[], bool]) -> object:
    """Do one task and return what came of it.

    Raises:
        stats.Cancelled: `should_cancel()` turned true.
    """
    from weightscope.compare import scan

    options = opened.job.options
    if task.kind == "unit":
        (unit,) = task.args
        return scan.run_unit(unit, opened.get, options, should_cancel)
    a, b, catalog = opened.get()
    if task.kind == "detail":
        (index,) = task.args
        return scan.compare_pair(catalog, index, a, b, options, should_cancel, histograms=True)
    if task.kind == "spectrum":
        from weightscope.analysis.spectrum import pair_spectrum

        (index,) = task.args
        pair = catalog.pair(index)
        sides = [scan.side_bytes(cp, info, bool(col.plain[index])) if info is not None else None
                 for cp, info, col in ((a, pair.a, catalog.a), (b, pair.b, catalog.b))]
        return pair_spectrum(a, b, pair, should_cancel=should_cancel, raw_a=sides[0], raw_b=sides[1])
    if task.kind == "map":
        from weightscope.analysis.change_map import matrix_shape, pooled

        index, rows, cols = task.args
        pair = catalog.pair(index)
        if pair.a is None or pair.b is None or pair.a.shape != pair.b.shape:
            return None
        raw_a = scan.side_bytes(a, pair.a, bool(catalog.a.plain[index]))
        raw_b = scan.side_bytes(b, pair.b, bool(catalog.b.plain[index]))
        return pooled(raw_a, pair.a.dtype, raw_b, pair.b.dtype, matrix_shape(pair.a.shape), rows, cols, should_cancel)
    raise ValueError(f"no such task: {task.kind}")


def serve(conn, opened: Opened, cancelled) -> None:
    """Take tasks from `conn` until it closes; answer each with a `Done`."""
    from weightscope.compare.stats import Cancelled, Unsupported
    from weightscope.sources.checkpoint import TensorUnreadable
    from weightscope.sources.errors import CheckpointError, one_line

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return

        def should_cancel(ticket: int = task.ticket) -> bool:
            return cancelled[ticket % SLOTS] == ticket

        try:
            done = Done(task.ticket, task.kind, execute(task, opened, should_cancel))
        except Cancelled:
            done = Done(task.ticket, task.kind, cancelled=True)
        except (CheckpointError, TensorUnreadable, Unsupported, ValueError) as exc:
            done = Done(task.ticket, task.kind, error=one_line(str(exc)))
        except Exception as exc:  # a bug: said in one line, with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            done = Done(task.ticket, task.kind, error=one_line(
                f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}:{where.lineno})"))
        try:
            conn.send(done)
        except (BrokenPipeError, OSError):
            return


def main(conn, job: Job, cancelled) -> None:
    """A worker process's life: the caller's environment and directory, then `serve`."""
    os.environ.update(job.environ)
    os.chdir(job.cwd)
    os.nice(NICE)
    from weightscope.compare import kernels  # noqa: F401  (the import loads the compiled loops)

    serve(conn, Opened(job), cancelled)
