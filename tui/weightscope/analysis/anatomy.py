"""Where a tensor sits in a model: its layer and its module type, from its name alone.

`model.layers.12.self_attn.q_proj.weight` is layer 12, module `q`; GPT-2's
`transformer.h.3.attn.c_attn.weight` is layer 3, module `qkv`; BERT's
`encoder.layer.5.attention.output.dense.weight` is layer 5, module `o`. MoE experts group
into one module per projection (`experts.down`). Tensors outside the repeated layers
(embeddings, the final norm, lm_head) sit in a row of their own. On top of that: a grid of
layers × modules for the overview, and the anomalies worth a look.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from weightscope.analysis.hierarchy import CODE, SEVERITY, badges
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable

OUTSIDE = "outside layers"
# (pattern on the module path after the layer number, module type); first match wins.
MODULES = [
    (r"experts\.\d+\.(gate_proj|w1)$", "experts.gate"),
    (r"experts\.\d+\.(up_proj|w3)$", "experts.up"),
    (r"experts\.\d+\.(down_proj|w2)$", "experts.down"),
    (r"(c_attn|qkv_proj|query_key_value|wqkv|attn_qkv)$", "qkv"),
    (r"(q_proj|query|wq|attn_q|q_lin)$", "q"),
    (r"(k_proj|key|wk|attn_k|k_lin)$", "k"),
    (r"(v_proj|value|wv|attn_v|v_lin)$", "v"),
    (r"(o_proj|out_proj|wo|attn_output|attention\.output\.dense|attn\.c_proj|out_lin|self_attn\.dense)$", "o"),
    (r"(gate_proj|w1|ffn_gate)$", "gate"),
    (r"(up_proj|w3|c_fc|fc1|intermediate\.dense|ffn_up|dense_h_to_4h|lin1)$", "up"),
    (r"(down_proj|w2|mlp\.c_proj|fc2|output\.dense|ffn_down|dense_4h_to_h|lin2)$", "down"),
    (r"(mlp\.gate|block_sparse_moe\.gate|router)$", "router"),
    (r"(input_layernorm|ln_1|attention_norm|attn_norm|attention\.output\.layernorm|norm1|sa_layer_norm)$", "norm 1"),
    (r"(post_attention_layernorm|ln_2|ffn_norm|output\.layernorm|norm2|output_layer_norm)$", "norm 2"),
]
COLUMN_ORDER = ["q", "k", "v", "qkv", "o", "gate", "up", "down", "router",
                "experts.gate", "experts.up", "experts.down", "norm 1", "norm 2"]
PARAMETER_SUFFIXES = ("weight", "bias", "scale")


@dataclass(frozen=True)
class Place:
    """A tensor's row and column in the overview.

    Attributes:
        row: "12" (or "vision_model.encoder.layers.12" when the model has several stacks),
            or `OUTSIDE`.
        layer: the layer number; None outside the layers.
        module: the module type ("q", "down", "norm 1", ... or the module's own path).
    """

    row: str
    layer: int | None
    module: str


LAYER = re.compile(r"(.+?)\.(\d+)(?:\.|$)")  # the first all-digit part after the first: the layer number


def place(name: str, stacks: set[str] | None = None) -> Place:
    """The row and column of a tensor name.

    Args:
        stacks: prefixes before the layer number seen in the model; with more than one, rows
            are named with their prefix so two stacks never share a row.
    """
    found = LAYER.match(name)  # one match, not a split: a 100,000-tensor model is placed in a blink
    if found is None:
        return Place(OUTSIDE, None, module_type(name))
    prefix, number = found.group(1), found.group(2)
    layer = int(number)
    row = f"{prefix}.{layer}" if stacks and len(stacks) > 1 else str(layer)
    return Place(row, layer, module_type(name[found.end():]))


def stack_of(name: str) -> str | None:
    found = LAYER.match(name)
    return found.group(1) if found else None


_module_types: dict[str, str] = {}


def module_type(path: str) -> str:
    """The canonical module of a path inside a layer, e.g. 'self_attn.q_proj.weight' -> 'q'."""
    found = _module_types.get(path)  # the same path recurs in every layer
    if found is None:
        shape = re.sub(r"\d+", "0", path)  # nor does the answer depend on the numbers: 800 experts, one lookup
        found = _module_types.get(shape)
        if found is None:
            found = _module_types[shape] = classify(path)
        _module_types[path] = found
    return found


def classify(path: str) -> str:
    parts = path.split(".")
    if len(parts) > 1 and parts[-1] in PARAMETER_SUFFIXES:
        parts = parts[:-1]
    module = ".".join(parts)
    lowered = module.lower()
    for pattern, kind in MODULES:
        if re.search(pattern, lowered):
            return kind
    return re.sub(r"\.\d+(?=\.|$)", ".*", module) or path


@dataclass
class Cell:
    """The tensors of one row and module, with their change combined.

    Attributes:
        count: how many tensors the cell holds.
        names: its most changed tensors, largest rel L2 first (at most `NAMED`; the cell's
            first tensors when none changed).
    """

    count: int = 0
    names: list[str] = field(default_factory=list)
    delta_sq: float = 0.0
    base_sq: float = 0.0
    statuses: set[str] = field(default_factory=set)

    @property
    def rel_l2(self) -> float | None:
        """‖Δ‖ / ‖A‖ over the cell's tensors together."""
        return math.sqrt(self.delta_sq / self.base_sq) if self.base_sq > 0 else None


NAMED = 3


@dataclass
class Grid:
    """Layers (rows, in order) × module types (columns), and the tensors outside the layers.

    Attributes:
        cells: (row, column) -> Cell; a `PackedCells` in a grid that crossed a pipe.
        outside: the modules outside the layers (embeddings, final norm, lm_head), in name
            order; their cells are keyed (OUTSIDE, module).
    """

    rows: list[str]
    columns: list[str]
    cells: Mapping[tuple[str, str], Cell]
    outside: list[str]

    def column_series(self, column: str) -> list[float]:
        """rel_l2 down the layers for one module type (0 where unknown), for a sparkline."""
        return [(self.cells.get((row, column)) or Cell()).rel_l2 or 0.0 for row in self.rows]

    def __reduce__(self):
        """Pickled as columns of plain values: a grid of 40 layers × 800 experts (32,000 cells) then
        unpickles in 0.04 s, where a `Cell` object each took the receiving interpreter (the app's,
        which draws) a third of a second."""
        cells = list(self.cells.values())
        columns = (list(self.cells), [cell.count for cell in cells], [len(cell.names) for cell in cells],
                   [name for cell in cells for name in cell.names], [cell.delta_sq for cell in cells],
                   [cell.base_sq for cell in cells], [tuple(sorted(cell.statuses)) for cell in cells])
        return Grid, (self.rows, self.columns, PackedCells(*columns), self.outside)


class PackedCells(Mapping):
    """A grid's cells as columns, each made a `Cell` when it is looked up."""

    def __init__(self, places: list[tuple[str, str]], counts: list[int], named: list[int], names: list[str],
                 delta_sq: list[float], base_sq: list[float], statuses: list[tuple[str, ...]]):
        """Cell k is at `places[k]`; `named[k]` of `names` in turn are its names."""
        self.places, self.counts, self.named, self.names = places, counts, named, names
        self.delta_sq, self.base_sq, self.statuses = delta_sq, base_sq, statuses
        self._at: dict[tuple[str, str], int] | None = None
        self._first: list[int] | None = None

    def __reduce__(self):
        return PackedCells, (self.places, self.counts, self.named, self.names, self.delta_sq, self.base_sq,
                             self.statuses)

    def __getitem__(self, key: tuple[str, str]) -> Cell:
        if self._at is None:
            self._at = dict(zip(self.places, range(len(self.places))))
            self._first = [0, *accumulate(self.named)]
        k = self._at[key]
        first = self._first[k]
        return Cell(self.counts[k], self.names[first:first + self.named[k]], self.delta_sq[k], self.base_sq[k],
                    set(self.statuses[k]))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.places)

    def __len__(self) -> int:
        return len(self.places)


def grid(catalog: Catalog, table: ResultTable) -> Grid:
    """The overview grid of the pairs read so far."""
    read = np.flatnonzero(table.status != results.UNREAD)
    names = [catalog.names[i] for i in read.tolist()]
    stacks = {s for s in map(stack_of, names) if s}
    places = [place(name, stacks) for name in names]
    keys = [(where.row, where.module) for where in places]
    ids = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    cell_of = np.array([ids[key] for key in keys], np.int64)
    values = table.values[read]
    rms, finite, l2 = values[:, c.FD + c.RMS], values[:, c.FA + c.FINITE], values[:, c.FA + c.L2]
    measured = ~(np.isnan(rms) | np.isnan(l2))
    delta_sq = np.bincount(cell_of, np.where(measured, rms ** 2 * np.nan_to_num(finite), 0.0), len(ids))
    base_sq = np.bincount(cell_of, np.where(measured, np.nan_to_num(l2) ** 2, 0.0), len(ids))
    counts = np.bincount(cell_of, minlength=len(ids))
    badge = badges(catalog, table, read)
    cells = {key: Cell(int(counts[k]), [], float(delta_sq[k]), float(base_sq[k])) for key, k in ids.items()}
    by_id = list(cells.values())
    for k, code in set(zip(cell_of.tolist(), badge.tolist())):
        by_id[k].statuses.add(SEVERITY[code])
    rel = np.nan_to_num(values[:, c.FD + c.REL_L2], nan=-1.0)
    for j in np.lexsort((-rel, cell_of)).tolist():  # each cell's most changed first
        cell = by_id[cell_of[j]]
        if len(cell.names) < NAMED:
            cell.names.append(names[j])
    layers = {where.row: (stack_of(name) or "", where.layer) for name, where in zip(names, places)
              if where.layer is not None}
    rows = sorted(layers, key=lambda r: layers[r])
    present = {column for row, column in cells if row != OUTSIDE}
    columns = [col for col in COLUMN_ORDER if col in present] + sorted(present - set(COLUMN_ORDER))
    outside = sorted(column for row, column in cells if row == OUTSIDE)
    return Grid(rows, columns, cells, outside)


@dataclass(frozen=True)
class Anomaly:
    name: str
    reason: str


def anomalies(catalog: Catalog, table: ResultTable, outlier_factor: float = 4.0,
              places: list[Place] | None = None) -> list[Anomaly]:
    """What deserves a look, most serious first: NaN/Inf, shape changes, dtype changes, tensors
    on one side only, unreadable tensors, and tensors whose rel_l2 lies far outside the typical
    change of their module type across layers.

    Dtype changes come one entry per kind ("16 tensors changed dtype float32 → Q4_0", named
    after the first): a quantized or cast pair changes them all, and one line says so.

    A change is an outlier when its module type moved in 3 or more tensors, its rel_l2 is at
    least `outlier_factor` times the median of that module type (or as many times smaller),
    and its log10(rel_l2) is more than 3.5 robust standard deviations (MAD) from the median's.
    The factor keeps a tight spread (every layer at 2.5%, one at 2.6%) quiet; the MAD keeps a
    wide but ordinary one quiet (rel_l2 falling steadily with depth).

    Args:
        places: every pair's `place`, where the caller has them already.
    """
    read = np.flatnonzero(table.status != results.UNREAD)
    badge = badges(catalog, table, read)
    found: list[Anomaly] = []
    reasons = {"nonfinite": "holds NaN or Inf", "shape_mismatch": "shape changed", "dtype": "dtype changed",
               "only_a": "only in A", "only_b": "only in B", "error": "unreadable"}
    for kind, reason in reasons.items():
        members = read[badge == CODE[kind]].tolist()
        if kind == "dtype":
            found += dtype_changes(catalog, members, reason)
            continue
        for i in members:
            if not (kind in ("only_a", "only_b") and catalog.tied_elsewhere(i)):
                found.append(Anomaly(catalog.names[i], reason))
    rel = table.values[read, c.FD + c.REL_L2]
    moved = read[np.nan_to_num(rel) > 0]
    by_module: dict[str, list[int]] = {}
    for i in moved.tolist():
        where = places[i] if places is not None else place(catalog.names[i])
        by_module.setdefault(where.module, []).append(i)
    for module, members in by_module.items():
        if len(members) < 3:  # with two, neither is the odd one out
            continue
        logs = np.log10(table.values[members, c.FD + c.REL_L2])
        middle = float(np.median(logs))
        spread = 1.4826 * float(np.median(np.abs(logs - middle)))
        for i, value in zip(members, logs.tolist()):
            distance = abs(value - middle)
            if distance >= math.log10(outlier_factor) and distance > 3.5 * spread:
                factor = 10 ** (value - middle)
                direction = f"{factor:.0f}× larger" if factor > 1 else f"{1 / factor:.0f}× smaller"
                found.append(Anomaly(catalog.names[i], f"change {direction} than typical for {module} across layers"))
    return found


def dtype_changes(catalog: Catalog, members: list[int], reason: str) -> list[Anomaly]:
    """One anomaly per kind of dtype change, named after its first tensor, in order of first tensor."""
    kinds: dict[tuple[str | None, str | None], list[int]] = {}
    for i in members:
        kinds.setdefault((catalog.a.stored_dtype(i), catalog.b.stored_dtype(i)), []).append(i)
    found = []
    for (before, after), changed in kinds.items():
        what = reason if len(changed) == 1 else f"{len(changed):,} tensors changed dtype"
        found.append(Anomaly(catalog.names[changed[0]], f"{what} {before} → {after}"))
    return found
