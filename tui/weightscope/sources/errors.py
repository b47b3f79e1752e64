"""The one error type bad input raises, and how its message is kept to one line."""

import os


def one_line(text: str, limit: int = 300) -> str:
    """Escape control characters and cut to `limit` characters, so any message fits a line."""
    escaped = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


class CheckpointError(Exception):
    """A file that cannot be read as a checkpoint; `str()` is one line naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = one_line(problem)
        super().__init__(f"{one_line(self.path, 200)}: {self.problem}")
