"""Messages that workers post back to the app's thread."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from weightscope.compare.align import Alignment
from weightscope.sources.checkpoint import Checkpoint
from weightscope.analysis.hierarchy import Names
from weightscope.compare.scan import PairResult


@dataclass
class Opened(Message):
    """Both checkpoints' headers are read, their names aligned and laid out as a tree."""

    a: Checkpoint
    b: Checkpoint | None
    alignment: Alignment
    tree: Names


@dataclass
class Filtered(Message):
    """The name tree of the pairs a filter keeps, built with the first `scanned` results."""

    pattern: str
    tree: Names
    scanned: int


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
    """Statistics of one pair for the detail pane; `complete` once its histograms are in."""

    result: PairResult
    complete: bool = True


@dataclass
class ViewReady(Message):
    """A pair's spectrum or change map (None where it has none), for the detail pane."""

    name: str
    view: str
    size: tuple[int, int]
    figure: object


@dataclass
class WholeReady(Message):
    """A whole-model view's content, worked out off the UI thread: the overview's grid, the
    table's rows, the anomalies, or the paths an export wrote."""

    view: str
    content: object
    scanned: int  # how many results it was worked out from
