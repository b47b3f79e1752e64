"""Starting an engine and talking to it, for the app and the command line alike.

`Engine(job)` starts the engine in a fresh interpreter (`python -m weightscope.engine.server`,
never a fork of a process that runs threads, and never a re-import of the caller's main
module) and gives the caller one pipe to it: `send` a request, `recv` what comes back. The
engine starts its worker processes the same way. `Engine()` starts it before the job is
known, `begin(job)` gives it: the engine's imports then overlap the caller's own (this
module imports nothing heavy before then). All of them end when the caller closes the
engine or goes away: each one reads end-of-file from its pipe.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weightscope.engine import protocol as msg


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def one_thread_blas() -> dict[str, str]:
    """This environment, with numpy's OpenBLAS at one thread unless the user set it: the engine
    runs a process per core already, and a small LAPACK call (the verdict's 256-square
    eigenvalues) that wakes a thread per core on a busy machine takes 100 times longer.
    torch keeps its own threads (a spectrum the user waits for may use every core)."""
    return {"OPENBLAS_NUM_THREADS": "1"} | dict(os.environ)


def start(module: str, quiet: bool = True, *args: str) -> tuple[subprocess.Popen, Connection]:
    """A fresh interpreter running `python -m module FD ARGS...`, and our end of its pipe (FD)."""
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    output = subprocess.DEVNULL if quiet else None  # the app's screen is no place for a child's output
    process = subprocess.Popen([sys.executable, "-m", module, str(fd), *args], pass_fds=(fd,),
                               stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=one_thread_blas())
    theirs.close()
    return process, Connection(ours.detach())


class Engine:
    """A running engine, and the pipe to it."""

    def __init__(self, job: msg.Job | None = None, helpers: int | None = None, quiet: bool = True):
        """
        Args:
            job: what to compare; None: given later by `begin` (the engine imports meanwhile).
            helpers: worker processes beside the engine's own worker thread (default: one per
                further core).
            quiet: the engine's processes write nothing to this terminal.
        """
        self.process, self.conn = start("weightscope.engine.server", quiet)
        self.helpers, self.quiet = max(0, cores() - 1) if helpers is None else helpers, quiet
        self.tickets = 0
        self.early_tree = None  # (A's names, their tree), built while the engine opens B
        if job is not None:
            self.begin(job)

    def begin(self, job: msg.Job) -> None:
        self.conn.send((job, self.helpers, self.quiet))

    def ticket(self) -> int:
        self.tickets += 1
        return self.tickets

    def send(self, request) -> None:
        """Send a request; once the engine has gone, nothing: closed by the caller (a timer of
        the app may still ask as it exits), or ended on its own, which `recv` says."""
        try:
            self.conn.send(request)
        except OSError:  # (BrokenPipeError is one)
            pass

    def ask(self, kind: str, *args) -> int:
        """Ask a question; its answer comes back with the returned ticket."""
        from weightscope.engine import protocol as msg

        ticket = self.ticket()
        self.send(msg.Ask(ticket, kind, args))
        return ticket

    def poll(self, seconds: float) -> bool:
        """Whether a message comes within `seconds`."""
        return self.conn.poll(seconds)

    def recv(self):
        """The next message from the engine; a fatal `Failed` when the engine process has ended.
        A's `Names` are taken here, not returned: their tree comes with `Opened`."""
        from weightscope.engine import protocol as msg

        try:
            message = self.conn.recv()
            if isinstance(message, msg.Names):
                from weightscope.analysis.hierarchy import of_names

                self.early_tree = message.names, of_names(message.names)
                message = self.conn.recv()
            if isinstance(message, msg.Opened) and self.early_tree is not None:
                return self.with_tree(message)
            return message
        except (EOFError, OSError):
            try:
                code = self.process.wait(2)
            except subprocess.TimeoutExpired:
                code = None
            why = f"exit status {code}" if code is not None and code >= 0 else \
                f"signal {-code}" if code is not None else "no exit status"
            return msg.Failed(None, "engine", f"the engine process stopped unexpectedly ({why})", fatal=True)

    def with_tree(self, opened: msg.Opened) -> msg.Opened:
        """`opened` with the tree of the pairs: A's, when A's names are the pairs' names (then
        the catalog came without them)."""
        from dataclasses import replace

        from weightscope.analysis.hierarchy import build

        names, tree = self.early_tree
        self.early_tree = None
        if opened.names_sent:
            return replace(opened, catalog=opened.catalog.named(names), tree=tree)
        return replace(opened, tree=build(opened.catalog))

    def close(self) -> None:
        """Ask the engine to stop, and make sure it has. A thread still reading the pipe gets
        end-of-file (the pipe is shut down, not closed under it)."""
        from weightscope.engine import protocol as msg

        try:
            self.conn.send(msg.Close())
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
