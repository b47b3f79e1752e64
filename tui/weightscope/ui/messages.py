"""Messages that workers post back to the app's thread."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from weightscope.core.align import Alignment
from weightscope.core.checkpoint import Checkpoint
from weightscope.core.scan import PairResult


@dataclass
class Opened(Message):
    """Both checkpoints' headers are read and their names aligned."""

    a: Checkpoint
    b: Checkpoint | None
    alignment: Alignment


@dataclass
class OpenFailed(Message):
    """A checkpoint could not be opened at all (one line, naming the file)."""

    error: str


@dataclass
class ScanResults(Message):
    """A batch of results from the background scan, and how far it has come in bytes."""

    results: list[PairResult]
    done: int
    total: int
    finished: bool = False


@dataclass
class DetailReady(Message):
    """Full statistics and histograms of one pair, for the detail pane."""

    result: PairResult
