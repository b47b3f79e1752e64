"""The engine for a training run: opens every checkpoint, answers each step from the cache or
plans the units that work it out, hands them to the workers, and the tensors' results to the
client as each is complete; at the end, the flags over the run.

It is the pair engine (`server.Server`) with its own opening and scan: the same loop, workers,
queues and acknowledgements.
"""

from __future__ import annotations

import os

import numpy as np

from weightscope.compare.run_columns import NONFINITE
from weightscope.compare.options import ScanOptions
from weightscope.engine import protocol as msg
from weightscope.engine.server import SCAN, Server, unexpected
from weightscope.engine.worker import NICE, Task
from weightscope.sources.errors import CheckpointError


class RunServer(Server):
    TELLS_LOOPS = False  # (a run's scan has a loop of its own, loaded with its first unit)

    def run(self) -> None:
        from weightscope.compare.run_plan import build
        from weightscope.sources.runs import open_run

        self.options = ScanOptions()  # a run is scanned by the compiled loops, on every core
        try:
            opened = open_run(self.job.spec)
            self.run_catalog = build(opened)
            self.checkpoint_files = [list(ck.files) for ck in opened.checkpoints]
            for checkpoint in opened.checkpoints:  # the workers read spans themselves
                checkpoint.close()
        except CheckpointError as exc:
            self.send(msg.Failed(None, "open", str(exc), fatal=True))
            return
        except Exception as exc:  # noqa: BLE001  (a bug, or a file nobody foresaw: said, never a traceback)
            self.send(msg.Failed(None, "open", unexpected(exc), fatal=True))
            return
        self.a = self.b = None
        self.send(msg.RunOpened(self.run_catalog))
        os.nice(NICE)
        self.start_local_worker()
        self.loop()

    def handle(self, request) -> None:
        if isinstance(request, msg.Scan):
            if self.scan is None:
                self.start_helpers_once()
                self.scan = RunScanState(self)
        elif isinstance(request, msg.Ack):
            self.scan.acknowledged()
        elif isinstance(request, msg.Close):
            self.running = False
        elif isinstance(request, msg.Ask):
            self.send(msg.Failed(request.ticket, request.kind, "a training run answers no questions yet"))


class RunScanState:
    """One run's scan: steps from the cache, units out, tensors' results back in plan order of completion."""

    def __init__(self, server: RunServer):
        from weightscope.compare import cache
        from weightscope.compare.run_plan import plan
        from weightscope.compare.run_results import RunTable
        from weightscope.compare.run_scan import RunAssembler

        self.server = server
        catalog = server.run_catalog
        self.table = RunTable(catalog)
        files = server.checkpoint_files
        self.keys: dict[int, str | None] = {}
        cached, missing, reference = [], [], None
        for t in range(1, len(catalog.points)):
            key = cache.step_key(files[0], files[t], files[t - 1]) if server.job.use_cache else None
            self.keys[t] = key
            found = cache.load_step(key, catalog.names) if key else None
            if found is None:
                missing.append(t)
                continue
            rows, sums, same, reference_sums = found
            self.table.sums[rows, t], self.table.same[rows, t] = sums, same
            reference = (rows, reference_sums) if reference is None else reference
            cached.append(t)
        self.plan = plan(catalog, missing)
        if not missing and reference is not None:  # nothing read: the reference's own sums as stored
            self.table.sums[reference[0], 0] = reference[1]
            self.table.same[reference[0], 0] = np.where(catalog.comparable[0, reference[0]], 1, 0)
        if reference is not None:  # the cached steps' statuses, with the reference's NaN/Inf counts as stored
            nonfinite = np.zeros(len(catalog))
            nonfinite[reference[0]] = reference[1][:, NONFINITE]
            self.table.finish(np.arange(len(catalog)), cached, nonfinite)
        self.cached = cached
        self.assembler = RunAssembler(self.table, self.plan)
        self.total, self.done_bytes = self.plan.nbytes, 0
        self.pending = len(self.plan.units)
        self.failures = 0
        self.number = self.unacked = 0
        self.outbox = [np.flatnonzero(self.plan.pieces == 0)]
        self.finished = False
        self.done: msg.RunDone | None = None
        server.units.extend(Task(SCAN, "run_unit", (unit,), server.options) for unit in self.plan.units)
        if not self.pending:
            self.finish()
        self.flush()

    def unit_done(self, unit, output, error: str | None) -> None:
        from weightscope.compare.run_scan import RunOutput

        if error is not None or (output is not None and output.error is not None):
            why = error or output.error
            if self.failures == 0:
                self.server.send(msg.Failed(None, "scan", why))
            self.failures += 1
            output = RunOutput(unit.number, error=f"not read: {why}")
        self.outbox.append(self.assembler.add(unit, output))
        self.done_bytes += unit.nbytes
        self.pending -= 1
        if not self.pending:
            self.finish()
        self.flush()

    def acknowledged(self) -> None:
        self.unacked -= 1
        self.flush()

    def flush(self) -> None:
        table = self.table
        while self.outbox and self.unacked < msg.WINDOW:
            rows, self.outbox = np.concatenate(self.outbox), []
            if not len(rows):
                continue
            self.number += 1
            self.unacked += 1
            self.server.send(msg.RunResults(self.number, rows, table.sums[rows], table.same[rows], table.status[rows],
                                            self.done_bytes, self.total))
        if not self.outbox and self.finished and self.done is not None:
            self.server.send(self.done)
            self.done = None

    def finish(self) -> None:
        """Every unit is in: store the steps worked out, and raise the flags."""
        from weightscope.analysis.runs import flags
        from weightscope.compare import cache

        server, table, catalog = self.server, self.table, self.server.run_catalog
        self.finished = True
        failed_steps = {t for (_, t) in table.errors if t > 0} if self.failures else set()
        for j, t in enumerate(self.plan.members):
            key = self.keys.get(t)
            if not self.plan.wanted[j] or key is None or t in failed_steps:
                continue
            rows = np.flatnonzero(catalog.present[0] | catalog.present[t] | catalog.present[t - 1])
            server.threads.submit(cache.save_step, key, [catalog.names[i] for i in rows], table.sums[rows, t].copy(),
                                  table.same[rows, t].copy(), table.sums[rows, 0].copy())
        found = []
        try:
            found = flags(catalog, table)
        except Exception as exc:  # noqa: BLE001
            server.send(msg.Failed(None, "flags", unexpected(exc)))
        read = np.zeros(len(catalog.points), np.int64)
        read[self.plan.members] = self.plan.read_bytes
        self.done = msg.RunDone(self.failures == 0, found, read.tolist(), self.cached)
