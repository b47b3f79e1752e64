"""The engine: opens the checkpoints, plans the scan, hands its work to the workers and its
results to the client, in a process of its own.

One loop waits on the client's pipe and the workers'. Work waits in queues: what a person
waits for (a tensor's figures, its spectrum or map) goes first, to the worker thread of this
process when a side must be read through its checkpoint's source (the others read plain
spans themselves), to any worker otherwise; the scan's units go to whichever worker is free.
A view's heads go first of all, and while they are worked out nothing else starts that
would leave the app no core to draw them. Results go to the client in plan order, at most
`protocol.WINDOW` messages ahead of its acknowledgements. Answers that need only the catalog
and the results so far (the name tree of a filter, the overview, anomalies, an export) are
worked out in a thread here. Anything that fails is said to the client in one line, and the
rest goes on.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Pipe, wait

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare import plan as plans
from weightscope.compare import results
from weightscope.compare.results import Batch, ResultTable
from weightscope.compare.scan import Assembler, PairJob, UnitOutput
from weightscope.engine import protocol as msg
from weightscope.engine.worker import NICE, Done, Opened, Task, fault, load_loops, serve
from weightscope.sources.errors import CheckpointError, one_line

CACHED_SLICE = 5000  # cached results per message: the client takes each before the next few come
SCAN = 0  # the scan's ticket (the client's tickets start at 1)


@contextmanager
def collector_paused():
    """Opening a 100,000-tensor pair makes millions of small objects and keeps most of them:
    the cyclic collector would walk them again and again, for a third of the time. Paused
    while opening, then what opening made is frozen (left out of later collections: it lives
    as long as the engine) and the collector runs as before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def unexpected(exc: BaseException) -> str:
    """A bug, said in one line with where it happened."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    place = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return one_line(f"{type(exc).__name__}: {exc}{place}")


class Worker:
    """A worker as the engine sees it: where its tasks go, and what it is doing."""

    def __init__(self, conn, tasks: queue.SimpleQueue | None = None):
        self.conn, self.tasks = conn, tasks
        self.busy: Task | None = None
        self.alive = True

    @property
    def local(self) -> bool:
        """In this process (a thread), with the engine's open checkpoints."""
        return self.tasks is not None

    def give(self, task: Task) -> None:
        self.busy = task
        if self.local:
            self.tasks.put(task)
        else:
            self.conn.send(task)


class LocalPipe:
    """The local worker's end: tasks from a queue, what came of them into a pipe the loop waits
    on, and the tickets the loop cancelled."""

    def __init__(self, tasks: queue.SimpleQueue, done, cancelled_tickets: set[int]):
        self.tasks, self.done, self.cancelled_tickets = tasks, done, cancelled_tickets

    def recv(self):
        return self.tasks.get()

    def send(self, done: Done) -> None:
        self.done.send(done)

    def cancelled(self, ticket: int) -> bool:
        return ticket in self.cancelled_tickets


class Server:
    TELLS_LOOPS = True  # the client hears when a worker's compiled loops are loaded (`msg.LoopsLoaded`)

    def __init__(self, conn, job: msg.Job, helpers: int, quiet: bool = True):
        """
        Args:
            helpers: worker processes to start beside the local worker thread.
            quiet: the helpers' stderr goes nowhere.
        """
        self.conn, self.job = conn, job
        self.helper_count, self.quiet = helpers, quiet
        self.cancelled: set[int] = set()
        self.helpers: list[Worker] = []
        self.urgent: deque[Task] = deque()  # for the local worker, before anything else
        self.units: deque[Task] = deque()  # the scan's
        self.background: deque[Task] = deque()  # spectra or breakdowns of many pairs (`diff --spectrum`)
        # ticket -> (indices pending, found, what the answer is made of once none is pending, for a view, kind)
        self.gathered: dict[int, tuple[set[int], dict, Callable[[dict], object], bool, str]] = {}
        self._known_heads = None
        self.side_notes: tuple[list[str], list[str] | None] = ([], None)  # after the scan (LoRA alarms)
        self.threads = ThreadPoolExecutor(1, thread_name_prefix="weightscope-answers")
        self.answers_in, self.answers_out = Pipe(duplex=False)  # from the answer thread to the loop
        self.answer_lock = threading.Lock()
        self.running = True
        self.scan: ScanState | None = None
        self.loops_loaded = False  # by some worker

    # Life

    def run(self) -> None:
        from weightscope.compare.device import resolve
        from weightscope.engine.opening import open_job, opens_elsewhere

        elsewhere = opens_elsewhere(self.job) if self.helper_count else None
        if elsewhere:
            self.start_helpers(elsewhere)  # the first opens B while this opens A
        try:
            fault("open")

            sent: tuple[str, ...] | None = None  # A's names, for the client to build the tree while B opens

            def names_of_a(a):
                nonlocal sent
                sent = tuple(a.tensors)
                self.send(msg.Names(sent))

            with collector_paused():
                a, b, _, self.catalog = open_job(self.job, self.stored_b if elsewhere else None,
                                                 names_of_a if self.job.tree else None)
        except CheckpointError as exc:
            self.send(msg.Failed(None, "open", str(exc), fatal=True))
            return
        except Exception as exc:  # noqa: BLE001  (a bug, or a file nobody foresaw: said, never a traceback)
            self.send(msg.Failed(None, "open", unexpected(exc), fatal=True))
            return
        self.a, self.b = a, b or a
        self.table = ResultTable(len(self.catalog))
        as_sent = sent is not None and self.catalog.names == sent
        self.send(msg.Opened(self.catalog.named(None), names_sent=True) if as_sent else msg.Opened(self.catalog))
        try:  # after the tree: on a GPU box this imports torch
            self.options = replace(self.job.options, device=resolve(self.job.options.device))
        except ValueError as exc:  # a device that cannot be had
            self.send(msg.Failed(None, "open", str(exc), fatal=True))
            return
        os.nice(NICE)  # opened at full speed, the tree awaited; from now on the app's drawing goes first
        self.start_local_worker()
        self.loop()

    def start_helpers(self, weights_b: str | None) -> None:
        """Start the worker processes; the first opens `weights_b` (B's weights) first, if given."""
        from weightscope.engine.client import start

        for k in range(self.helper_count):
            opens = weights_b is not None and k == 0
            _, conn = start("weightscope.engine.worker", self.quiet, str(os.getpid()), *(["opens-b"] if opens else []))
            conn.send((self.job, weights_b if opens else None))
            self.helpers.append(Worker(conn))

    def start_helpers_once(self) -> None:
        """The worker processes, once the scan is asked (unless one opened B): sooner, their
        imports would slow the opening down, and the app's first screen with it."""
        if not self.helpers:
            self.start_helpers(None)

    @property
    def workers(self) -> list[Worker]:
        return [self.local, *self.helpers]

    def stored_b(self):
        """B's weights as the first worker opened them, or None (then the engine opens them)."""
        try:
            done = self.helpers[0].conn.recv()
        except (EOFError, OSError):
            return None
        return done.content

    def start_local_worker(self) -> None:
        tasks: queue.SimpleQueue = queue.SimpleQueue()
        done_in, done_out = Pipe(duplex=False)
        self.local = Worker(done_in, tasks)
        opened = Opened(self.job, (self.a, self.b))

        def work():
            done_out.send(load_loops())
            serve(LocalPipe(tasks, done_out, self.cancelled), opened)

        threading.Thread(target=work, name="weightscope-worker", daemon=True).start()

    def loop(self) -> None:
        while self.running:
            sources = [self.conn, self.answers_in] + [w.conn for w in self.workers if w.alive]
            for ready in wait(sources):
                if ready is self.conn:
                    try:
                        self.handle(self.conn.recv())
                    except (EOFError, OSError):
                        self.running = False  # the client has gone
                elif ready is self.answers_in:
                    self.send(self.answers_in.recv())
                else:
                    self.from_worker(next(w for w in self.workers if w.conn is ready))
            self.dispatch()
        for helper in self.helpers:
            if helper.alive:
                try:
                    helper.conn.send(None)
                except OSError:
                    pass

    def send(self, message) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            self.running = False

    # Requests

    def handle(self, request) -> None:
        if isinstance(request, msg.Scan):
            if self.scan is None:
                self.start_scan()
        elif isinstance(request, msg.Ack):
            self.scan.acknowledged()
        elif isinstance(request, msg.Ask):
            self.ask(request)
        elif isinstance(request, msg.Cancel):
            self.cancel(request.ticket)
        elif isinstance(request, msg.Close):
            self.running = False

    def ask(self, request: msg.Ask) -> None:
        if request.kind in ("detail", "histograms", "spectrum", "map"):
            index, *rest = request.args
            job = PairJob.of(self.catalog, index)
            self.urgent.append(Task(request.ticket, request.kind, (job, *rest), self.options))
        elif request.kind == "spectra":
            changed = np.nan_to_num(self.table.values[:, c.FD + c.FCHANGED]) > 0
            wanted = {i for i in np.flatnonzero(changed).tolist() if len(self.catalog.a.shape[i] or ()) >= 2}
            self.gather(request.ticket, "spectrum", wanted, dict.fromkeys(np.flatnonzero(changed).tolist()))
        elif request.kind == "verdict":  # once the scan is done: spectra of a sample, then the rest from the results
            from weightscope.analysis import verdict

            table = self.snapshot()
            self.gather(request.ticket, "spectrum", set(verdict.sample(self.catalog, table)), {},
                        lambda found: verdict.decide(self.catalog, table, found, self.side_notes),
                        rows=verdict.SAMPLE_ROWS, asked="verdict")
        elif request.kind == "heads":  # what a person waits for: the pairs of a view
            self.gather(request.ticket, "heads", set(request.args), {}, urgent=True)
        elif request.kind in ("breakdowns", "inside"):
            from weightscope.analysis import heads

            known = self.known_heads()
            wanted = set(heads.split_pairs(self.catalog, known))
            if request.kind == "breakdowns":
                self.gather(request.ticket, "heads", wanted, {}, lambda found: (known, found))
            else:
                self.gather(request.ticket, "heads", wanted, {},
                            lambda found: heads.inside(self.catalog, self.snapshot(), known, found))
        else:
            self.threads.submit(self.answer, request)

    def known_heads(self):
        """The comparison's head counts (read once: `--heads`, else the configs beside the weights)."""
        if self._known_heads is None:
            from weightscope.analysis.heads import known_heads

            self._known_heads = known_heads([self.catalog.summary_a, self.catalog.summary_b], self.job.heads)
        return self._known_heads

    def gather(self, ticket: int, kind: str, wanted: set[int], found: dict,
               answer: Callable[[dict], object] = lambda found: found, urgent: bool = False,
               rows: int | None = None, asked: str | None = None) -> None:
        """Work on many pairs for one answer: a task per pair, the answer once all are in. For a
        view (`urgent`) one pair's failure fails the answer; in the background (`diff --heads`)
        it stands for that pair alone. `rows`: spectra of that many leading rows only; `asked`:
        what the client asked for, named in a failure (the tasks' kind by default)."""
        self.gathered[ticket] = (set(wanted), found, answer, urgent, asked or kind)
        extra = (self.known_heads(),) if kind == "heads" else (rows,) if rows else ()
        tasks = [Task(ticket, kind, (PairJob.of(self.catalog, i), *extra), self.options) for i in sorted(wanted)]
        (self.urgent if urgent else self.background).extend(tasks)
        self.gathered_answered(ticket)

    def answer(self, request: msg.Ask) -> None:
        """Work out an answer from the catalog and the results so far (in the answer thread)."""
        from weightscope.engine import answers

        self.reply_with(request.ticket, request.kind, lambda: answers.answer(request, self.catalog, self.snapshot()))

    def snapshot(self) -> ResultTable:
        """The results so far, as they stand now (the scan goes on adding to its own table)."""
        copy = ResultTable(len(self.table))
        copy.add(self.table.batch())
        copy.notes.update(self.table.notes)
        return copy

    def cancel(self, ticket: int) -> None:
        self.cancelled.add(ticket)
        for worker in self.helpers:
            if worker.alive and worker.busy is not None and worker.busy.ticket == ticket:
                worker.conn.send(msg.Cancel(ticket))
        for pending in (self.urgent, self.units, self.background):
            kept = [t for t in pending if t.ticket != ticket]
            pending.clear()
            pending.extend(kept)
        self.gathered.pop(ticket, None)

    # Work

    def dispatch(self) -> None:
        for worker in self.workers:
            if not worker.alive or worker.busy is not None:
                continue
            if not worker.local and self.options.device != "cpu":
                continue  # one process owns the GPU: the engine's
            fits = [t for t in self.urgent if worker.local or not t.args[0].needs_sources]
            urgent = next((t for t in fits if t.kind == "heads"), None) or next(iter(fits), None)
            if (urgent is not None and urgent.kind == "heads") or not self.heads_first():
                if urgent is not None:  # what a person waits for; reading through sources, in this process
                    self.urgent.remove(urgent)
                    worker.give(urgent)
                elif self.units or self.background:
                    worker.give((self.units or self.background).popleft())

    def heads_first(self) -> bool:
        """Whether anything but a view's heads must wait: they are being worked out, or wait
        for a worker, and one more worker busy would leave the app no core to draw them (in a
        tenth of a second the view shows; worked out beside the tensor's figures and the scan,
        on two cores, they took twice as long)."""
        alive = [w for w in self.workers if w.alive]
        viewing = {ticket for ticket, (_, _, _, urgent, _) in self.gathered.items() if urgent}
        if not any(t.kind == "heads" for t in self.urgent) and \
                not any(w.busy is not None and w.busy.kind == "heads" and w.busy.ticket in viewing for w in alive):
            return False
        others = sum(1 for w in alive if w.busy is not None and w.busy.kind != "heads")
        return others >= len(alive) - 2

    def from_worker(self, worker: Worker) -> None:
        try:
            done: Done = worker.conn.recv()
        except (EOFError, OSError):
            self.lost(worker)
            return
        if done.kind == "loaded":  # its compiled loops (not a task): the first worker's are said
            if self.TELLS_LOOPS and not self.loops_loaded:
                self.send(msg.LoopsLoaded())
            self.loops_loaded = True
            return
        task, worker.busy = worker.busy, None
        if task.kind in ("unit", "run_unit"):
            self.scan.unit_done(task.args[0], done.content if done.error is None else None, done.error)
        elif task.kind == "histograms" and task.ticket == SCAN:
            self.scan.histograms_done(task.args[0].index, done.content if done.error is None else {})
        elif task.kind == "resized" and task.ticket == SCAN:
            self.scan.resized_done(task.args[0], done.content, done.error)
        elif task.ticket in self.gathered:
            index = task.args[0].index
            pending, found, _, urgent, _ = self.gathered[task.ticket]
            if urgent and done.error is not None:
                self.cancel(task.ticket)
                self.send(msg.Failed(task.ticket, task.kind, done.error))
                return
            pending.discard(index)
            found[index] = done.content if done.error is None else self.failed_part(task, done.error)
            self.gathered_answered(task.ticket)
        elif done.cancelled or task.ticket in self.cancelled:
            pass
        elif done.error is not None:
            self.send(msg.Failed(task.ticket, task.kind, done.error))
        else:
            self.send(msg.Reply(task.ticket, done.content))

    @staticmethod
    def failed_part(task: Task, error: str):
        """What stands for one pair's failed work in a gathered answer."""
        if task.kind == "heads":
            from weightscope.analysis.heads import Unavailable

            return Unavailable(error)
        return None

    def gathered_answered(self, ticket: int) -> None:
        pending, found, answer, urgent, kind = self.gathered[ticket]
        if not pending:
            del self.gathered[ticket]
            if urgent:  # a view's few pairs, put together at once
                self.reply_with(ticket, kind, lambda: answer(found))
            else:  # a whole model's (the verdict): in the answer thread, the loop goes on meanwhile
                self.threads.submit(self.reply_with, ticket, kind, lambda: answer(found))

    def reply_with(self, ticket: int, kind: str, work: Callable[[], object]) -> None:
        """Send what `work()` gives, or why it failed, in one line."""
        try:
            reply = msg.Reply(ticket, work())
        except OSError as exc:
            reply = msg.Failed(ticket, kind, one_line(str(exc)))
        except Exception as exc:  # noqa: BLE001
            reply = msg.Failed(ticket, kind, unexpected(exc))
        with self.answer_lock:
            self.answers_out.send(reply)

    def lost(self, worker: Worker) -> None:
        """A worker process stopped: what it was doing fails, and it gets no more work."""
        worker.alive = False
        task, worker.busy = worker.busy, None
        why = "a worker process stopped unexpectedly"
        if task is not None and task.kind in ("unit", "run_unit"):
            self.scan.unit_done(task.args[0], None, why)
        elif task is not None and task.kind == "histograms" and task.ticket == SCAN:
            self.scan.histograms_done(task.args[0].index, {})
        elif task is not None and task.kind == "resized" and task.ticket == SCAN:
            self.scan.resized_done(task.args[0], None, why)
        elif task is not None:
            self.send(msg.Failed(task.ticket, task.kind, why))
        if not any(w.alive for w in self.workers):
            self.send(msg.Failed(None, "scan", f"{why}, and none is left", fatal=True))
            self.running = False

    def start_scan(self) -> None:
        from weightscope.compare import cache

        self.start_helpers_once()
        options = self.options
        plan = plans.build(self.catalog, options.atol, options.rtol, device=options.device)
        key = cache.key(self.a, self.b, options, self.catalog.single) if self.job.use_cache else None
        cached = cache.load(key, self.catalog) if key else None
        self.scan = ScanState(self, plan, key, cached)
        if cached is None:
            self.units.extend(Task(SCAN, "unit", (unit,), options) for unit in plan.units)


class ScanState:
    """One scan's progress: results waiting for their turn, for the client's acknowledgements."""

    def __init__(self, server: Server, plan: plans.Plan, key: str | None, cached: ResultTable | None):
        self.server, self.plan, self.key = server, plan, key
        self.assembler = Assembler(server.catalog, plan)
        self.total, self.done_bytes = plan.nbytes, 0
        self.number = self.unacked = 0
        self.outbox: list[Batch] = []  # released results not yet sent
        self.waiting: dict[int, Batch] = {}  # results of units done out of turn
        self.released = 0
        self.failures = 0
        self.cached = cached is not None
        self.finished = False
        self.histograms: set[int] | None = None  # pairs whose histograms are still being counted
        self.resizing: set[int] = set()  # resized pairs whose common and added parts are still being read
        self.done_message: msg.ScanDone | None = None
        if cached is not None:  # from the cache: in slices, each taken before the next few come
            server.table = cached
            self.done_bytes = self.total
            self.outbox = [cached.batch(np.arange(start, min(start + CACHED_SLICE, len(cached))))
                           for start in range(0, len(cached), CACHED_SLICE)]
            self.released = len(plan.units)
        else:
            self.add(self.assembler.with_ties(plan.ready))
        self.release()

    def add(self, batch: Batch) -> None:
        if len(batch):
            self.server.table.add(batch)
            self.outbox.append(batch)

    def unit_done(self, unit, output: UnitOutput | None, error: str | None) -> None:
        if error is not None:
            if self.failures == 0:
                self.server.send(msg.Failed(None, "scan", error))
            self.failures += 1
            output = UnitOutput(unit.number, error=f"not read: {error}")
        self.waiting[unit.number] = self.assembler.add(output)
        self.release()

    def release(self) -> None:
        """Hand on the results of units done, in plan order."""
        units = self.plan.units
        while self.released < len(units) and self.released in self.waiting:
            self.add(self.waiting.pop(self.released))
            self.done_bytes += units[self.released].nbytes
            self.released += 1
        if self.released == len(units) and not self.finished and self.histograms is None:
            self.count_histograms()
        self.flush()

    def acknowledged(self) -> None:
        self.unacked -= 1
        self.flush()

    def flush(self) -> None:
        while self.outbox and self.unacked < msg.WINDOW:
            if self.cached:  # slices stay slices: the client takes each in turn
                batch = self.outbox.pop(0)
            else:
                batch, self.outbox = Batch.join(self.outbox), []
            self.number += 1
            self.unacked += 1
            self.server.send(msg.Results(self.number, batch, self.done_bytes, self.total, self.cached))
        if not self.outbox and self.done_message is not None:
            self.server.send(self.done_message)
            self.done_message = None

    def count_histograms(self) -> None:
        """With `--histograms`, a second pass per pair once the figures are in; and one per
        resized pair, over its common part and its added rows (then `finish`)."""
        from weightscope.compare import overlap

        server = self.server
        table = server.table
        self.histograms = set()
        if server.options.histograms and not self.cached:
            for i in np.flatnonzero(table.status != results.UNREAD).tolist():
                self.histograms.add(i)
                server.units.append(Task(SCAN, "histograms", (PairJob.of(server.catalog, i), int(table.status[i])),
                                         server.options))
        if not self.cached:
            for i in overlap.qualifying(server.catalog, table.status):
                self.resizing.add(i)
                server.units.append(Task(SCAN, "resized", (PairJob.of(server.catalog, i),), server.options))
        if not self.histograms and not self.resizing:
            self.finish()

    def histograms_done(self, index: int, found: dict) -> None:
        self.server.table.histograms[index] = found
        self.histograms.discard(index)
        self.second_pass_done()

    def resized_done(self, job: PairJob, found, error: str | None) -> None:
        """A resized pair's common and added parts, or why they could not be worked out (in one line)."""
        from weightscope.compare import overlap

        if error is not None:  # said in one line; the scan is not complete (nor stored)
            self.failures += 1
            self.server.send(msg.Failed(None, "resized", f"{job.pair.name}: {error}"))
            found = overlap.failed(job.pair, error)
        if found is not None:
            self.server.table.resized[job.index] = found
        self.resizing.discard(job.index)
        self.second_pass_done()

    def second_pass_done(self) -> None:
        if not self.histograms and not self.resizing:
            self.finish()
            self.flush()

    def finish(self) -> None:
        """The scan is over: store it, and add what the whole of it says (LoRA notes)."""
        from weightscope.analysis.lora_notes import annotate
        from weightscope.compare import cache

        server = self.server
        self.finished = True
        if not self.cached and self.key and self.failures == 0:
            server.threads.submit(cache.save, self.key, server.snapshot(), server.catalog)
        notes, sides = {}, ([], None)
        try:
            notes, sides = annotate(server.a, server.b if server.job.path_b else None, server.catalog, server.table)
        except Exception as exc:  # noqa: BLE001
            server.send(msg.Failed(None, "scan", unexpected(exc)))
        server.table.notes.update(notes)
        server.side_notes = sides
        self.done_message = msg.ScanDone(self.failures == 0, notes, sides, self.plan.notes,
                                         server.table.histograms if server.options.histograms else {},
                                         server.table.resized)


def main(fd: int) -> None:
    """The engine process's life: the job and its worker processes, then the client's requests."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        job, helpers, quiet = conn.recv()
    except (EOFError, OSError, TypeError):  # (TypeError: closed before it was given a job)
        return
    if isinstance(job, msg.RunJob):
        from weightscope.engine.runs import RunServer

        RunServer(conn, job, helpers, quiet).run()
    else:
        Server(conn, job, helpers, quiet).run()


if __name__ == "__main__":
    import sys

    # Run as the module itself, not as `__main__`: what it sends is pickled by module name, and
    # `__main__` is another program in the process that reads it.
    from weightscope.engine.server import main as server_main

    server_main(int(sys.argv[1]))
