"""The messages between a client (the app, `diff`, `inspect`), the engine and its workers.

A client asks with a request carrying a `ticket` it chose; the engine answers with a
`Reply` or a `Failed` of the same ticket. Scan results flow without asking: `Results` in
plan order, each acknowledged by the client with `Ack` (the engine keeps at most `WINDOW`
unacknowledged, so a slow client is never flooded), then `ScanDone`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from weightscope.compare.options import ScanOptions

if TYPE_CHECKING:  # the app's first screen imports this module: nothing heavy before it is drawn
    from weightscope.compare.catalog import Catalog
    from weightscope.compare.results import Batch

WINDOW = 4  # result messages in flight before the engine waits for an acknowledgement


@dataclass(frozen=True)
class Job:
    """What to compare and how: the engine's start-up arguments."""

    path_a: str
    path_b: str | None  # None: browse A alone
    adapter: str | None = None  # check a merge: B against A + ΔW of this adapter
    lora_alpha: float | None = None  # the scaling of an adapter saved without its config
    lora_scaling: float | None = None
    options: ScanOptions = ScanOptions()  # `device` may be "auto": the engine resolves it
    use_cache: bool = True
    tree: bool = False  # `Opened` comes with the name tree (the app draws it first)
    heads: tuple[int, int] | None = None  # `--heads N,KV`: head counts that override any config


# Client -> engine


@dataclass(frozen=True)
class Scan:
    """Scan every pair (or answer from the cache): `Results` follow, then `ScanDone`."""


@dataclass(frozen=True)
class Ack:
    number: int


@dataclass(frozen=True)
class Ask:
    """A question with an answer: `kind` names it, `args` are its arguments.

    Kinds: "detail" (index[, resized]) -> a Batch (with a resized pair's common and added parts
    when `resized`); "histograms" (index, status) -> its histograms, asked
    once its figures are shown; "spectrum"/"map" (index, rows, cols) ->
    a Spectrum or ChangeMap (None where there is none); "tree" (pattern) -> a NameTree;
    "overview", "anomalies" -> their content; "export" (directory) -> the paths written;
    "spectra" -> {index: Spectrum | None} for every changed pair; "heads" (index, ...) ->
    {index: Breakdown | Unavailable | None} of those pairs (analysis.heads); "breakdowns" ->
    (Known, that dict for every attention and expert pair); "inside" -> analysis.heads.Inside,
    the overview's layers × heads and layers × experts.
    """

    ticket: int
    kind: str
    args: tuple = ()


@dataclass(frozen=True)
class Cancel:
    """Stop work on this ticket (sent by the client to the engine, and by the engine to a worker)."""

    ticket: int


@dataclass(frozen=True)
class Close:
    pass


# Engine -> client


@dataclass(frozen=True)
class Names:
    """A's names, as soon as A is open, when the job asks for the tree (`Job.tree`): the client
    builds the tree from them while the engine opens B (`client.Engine.recv`)."""

    names: tuple[str, ...]


@dataclass
class Opened:
    """Both sides' headers are read and their names aligned. Where the pairs' names are the
    `Names` sent before, the catalog comes without them (`Catalog.named(None)`): 100,000 names
    are not sent twice, and the client's tree of them is the pairs' tree."""

    catalog: Catalog
    tree: object | None = None  # analysis.hierarchy.NameTree when the job asked for it (made by the client)
    names_sent: bool = False  # the catalog's names are the `Names` sent before (and left out of it)


@dataclass(frozen=True)
class LoopsLoaded:
    """A worker has loaded the compiled loops the scan runs on (a first run compiles them, for
    up to a minute: the client says so while it waits, `LOADING_LOOPS`)."""


LOADING_LOOPS = "loading the compiled loops (a first run compiles them: up to a minute, once)"
LOOPS_WAIT = 1.0  # seconds without a result or `LoopsLoaded` before a client says `LOADING_LOOPS`


@dataclass
class Results:
    """A batch of results in plan order, and how far the scan has come in bytes."""

    number: int
    batch: Batch
    done: int
    total: int
    cached: bool = False


@dataclass
class ScanDone:
    """The scan is over. `complete` is false when it stopped early (closed or failed).

    Attributes:
        notes: per pair, notes the results add once all are in (what a LoRA adapter did to
            each tensor, and the alarms); they replace the pairs' notes.
        sides: each side's checkpoint notes after the scan (LoRA alarms about the whole adapter).
        plan_notes: what the plan found (files on both sides read as identical without reading).
        resized: per pair resized in one dimension, its common part and added rows (`compare.overlap.Resized`).
    """

    complete: bool
    notes: dict[int, tuple[str, ...]] = field(default_factory=dict)
    sides: tuple[list[str], list[str] | None] = ([], None)
    plan_notes: list[str] = field(default_factory=list)
    histograms: dict[int, dict] = field(default_factory=dict)  # with `ScanOptions.histograms`
    resized: dict[int, object] = field(default_factory=dict)


@dataclass
class Reply:
    ticket: int
    content: object


@dataclass
class Failed:
    """Something the engine did failed; `ticket` None for its own work (opening, the scan)."""

    ticket: int | None
    job: str
    message: str
    fatal: bool = False  # the engine cannot go on (nothing could be opened)


# A training run (`weightscope diff BASE RUN_DIR/`): the engine opens every checkpoint, then
# answers `Scan` with `RunResults` (acknowledged as `Results` are) and `RunDone`.


@dataclass(frozen=True)
class RunJob:
    """A run to scan: `spec` from `sources.runs.plan_run`."""

    spec: object  # sources.runs.RunSpec
    use_cache: bool = True


@dataclass
class RunOpened:
    """Every checkpoint's headers are read (`compare.run_plan.RunCatalog`; its notes say which were skipped)."""

    catalog: object


@dataclass
class RunResults:
    """Tensors complete at every step the scan works out: their rows of `RunTable` (`add` takes them)."""

    number: int
    rows: object  # np.ndarray of tensor indices
    sums: object
    same: object
    status: object
    done: int
    total: int


@dataclass
class RunDone:
    """The run's scan is over. `complete` is false when some unit failed (said in a `Failed`).

    Attributes:
        flags: `analysis.runs.RunFlag`s over the run.
        read: bytes read per checkpoint (0 for those answered from the cache).
        cached: the steps answered from the cache (run indices).
    """

    complete: bool
    flags: list = field(default_factory=list)
    read: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
