"""Starting an engine and talking to it, for the app and the command line alike.

`Engine(job)` starts the engine in a fresh interpreter (`python -m weightscope.engine.server`,
never a fork of a process that runs threads, and never a re-import of the caller's main
module) and gives the caller one pipe to it: `send` a request, `recv` what comes back. The
engine starts its worker processes the same way. All of them end when the caller closes the
engine or goes away: each one reads end-of-file from its pipe.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start(module: str, quiet: bool = True) -> tuple[subprocess.Popen, Connection]:
    """A fresh interpreter running `module`'s `main(conn)`, and our end of its pipe."""
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    output = subprocess.DEVNULL if quiet else None  # the app's screen is no place for a child's output
    process = subprocess.Popen([sys.executable, "-m", module, str(fd)], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                               stdout=output, stderr=output)
    theirs.close()
    return process, Connection(ours.detach())


class Engine:
    """A running engine, and the pipe to it.

    `Engine()` starts the process at once and gives it the job later (`begin`): the engine
    loads its modules while the caller is still loading its own and working out the job.
    This module imports nothing heavy for the same reason.
    """

    def __init__(self, job=None, helpers: int | None = None, quiet: bool = True):
        """
        Args:
            job: the `protocol.Job`, or None to give it with `begin`.
            helpers: worker processes beside the engine's own worker thread (default: one per
                further core).
            quiet: the engine's processes write nothing to this terminal.
        """
        self.process, self.conn = start("weightscope.engine.server", quiet)
        self.quiet = quiet
        self.tickets = 0
        if job is not None:
            self.begin(job, helpers)

    def begin(self, job, helpers: int | None = None) -> None:
        """Give the engine its job: it opens the checkpoints."""
        self.conn.send((job, max(0, cores() - 1) if helpers is None else helpers, self.quiet))

    def ticket(self) -> int:
        self.tickets += 1
        return self.tickets

    def send(self, request) -> None:
        self.conn.send(request)

    def ask(self, kind: str, *args) -> int:
        """Ask a question; its answer comes back with the returned ticket."""
        from weightscope.engine.protocol import Ask

        ticket = self.ticket()
        self.conn.send(Ask(ticket, kind, args))
        return ticket

    def recv(self):
        """The next message from the engine; a fatal `Failed` when the engine process has ended."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            try:
                code = self.process.wait(2)
            except subprocess.TimeoutExpired:
                code = None
            why = f"exit status {code}" if code is not None and code >= 0 else \
                f"signal {-code}" if code is not None else "no exit status"
            from weightscope.engine.protocol import Failed

            return Failed(None, "engine", f"the engine process stopped unexpectedly ({why})", fatal=True)

    def close(self) -> None:
        """Ask the engine to stop, and make sure it has. A thread still reading the pipe gets
        end-of-file (the pipe is shut down, not closed under it)."""
        from weightscope.engine.protocol import Close

        try:
            self.conn.send(Close())
            with socket.fromfd(self.conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as ours:
                ours.shutdown(socket.SHUT_RDWR)
        except OSError:  # already gone
            pass
        try:
            self.process.wait(3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
