"""Starting an engine and talking to it, for the app and the command line alike.

`Engine(job)` starts the engine process and one worker process per further core (spawned:
a fresh interpreter each, never a fork of a process that runs threads), wires them with
pipes, and gives the caller one pipe: `send` a request, `recv` what comes back. The
processes end when the caller closes the engine or exits.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace

from weightscope.engine import protocol as msg


def helpers_wanted() -> int:
    """Worker processes beside the engine's own worker thread: one per further core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, cores - 1)


class Engine:
    """A running engine: its processes, and the pipe to it."""

    def __init__(self, job: msg.Job, helpers: int | None = None):
        from weightscope.engine import server, worker

        job = replace(job, cwd=os.getcwd(), environ=dict(os.environ))
        context = multiprocessing.get_context("spawn")
        self.conn, engine_end = context.Pipe()
        self.cancelled = context.RawArray("q", worker.SLOTS)
        pairs = [context.Pipe() for _ in range(helpers_wanted() if helpers is None else helpers)]
        self.process = context.Process(target=server.main, name="weightscope-engine", daemon=True,
                                       args=(engine_end, job, [p[0] for p in pairs], self.cancelled))
        self.process.start()
        self.helpers = [context.Process(target=worker.main, name="weightscope-worker", daemon=True,
                                        args=(p[1], job, self.cancelled)) for p in pairs]
        for process in self.helpers:
            process.start()
        engine_end.close()  # the children hold their ends; closing ours lets EOF reach whoever is left
        for a_end, b_end in pairs:
            a_end.close()
            b_end.close()
        self.tickets = 0

    def ticket(self) -> int:
        self.tickets += 1
        return self.tickets

    def send(self, request) -> None:
        self.conn.send(request)

    def ask(self, kind: str, *args) -> int:
        """Ask a question; its answer comes back with the returned ticket."""
        ticket = self.ticket()
        self.conn.send(msg.Ask(ticket, kind, args))
        return ticket

    def recv(self):
        """The next message from the engine; a fatal `Failed` when the engine process has ended."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1)
            code = self.process.exitcode
            why = f"exit status {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "unknown"
            return msg.Failed(None, "engine", f"the engine process stopped unexpectedly ({why})", fatal=True)

    def close(self) -> None:
        """Ask the engine to stop, and make sure its processes are gone."""
        try:
            self.conn.send(msg.Close())
        except (BrokenPipeError, OSError):
            pass
        self.conn.close()
        for process in (self.process, *self.helpers):
            process.join(2)
            if process.is_alive():
                process.terminate()
                process.join(1)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
