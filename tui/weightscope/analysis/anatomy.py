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
import statistics
from dataclasses import dataclass, field

from weightscope.compare.scan import PairResult

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


def place(name: str, stacks: set[str] | None = None) -> Place:
    """The row and column of a tensor name.

    Args:
        stacks: prefixes before the layer number seen in the model; with more than one, rows
            are named with their prefix so two stacks never share a row.
    """
    parts = name.split(".")
    number = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if number is None or number == 0:
        return Place(OUTSIDE, None, module_type(".".join(parts)))
    prefix = ".".join(parts[:number])
    layer = int(parts[number])
    row = f"{prefix}.{layer}" if stacks and len(stacks) > 1 else str(layer)
    return Place(row, layer, module_type(".".join(parts[number + 1:])))


def stack_of(name: str) -> str | None:
    parts = name.split(".")
    number = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return ".".join(parts[:number]) if number else None


def module_type(path: str) -> str:
    """The canonical module of a path inside a layer, e.g. 'self_attn.q_proj.weight' -> 'q'."""
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
    """The tensors of one row and module, with their change combined."""

    names: list[str] = field(default_factory=list)
    delta_sq: float = 0.0
    base_sq: float = 0.0
    statuses: set[str] = field(default_factory=set)

    @property
    def rel_l2(self) -> float | None:
        """‖Δ‖ / ‖A‖ over the cell's tensors together."""
        return math.sqrt(self.delta_sq / self.base_sq) if self.base_sq > 0 else None


@dataclass
class Grid:
    """Layers (rows, in order) × module types (columns), and the tensors outside the layers.

    Attributes:
        outside: the modules outside the layers (embeddings, final norm, lm_head), in name
            order; their cells are keyed (OUTSIDE, module).
    """

    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    outside: list[str]

    def column_series(self, column: str) -> list[float]:
        """rel_l2 down the layers for one module type (0 where unknown), for a sparkline."""
        return [(self.cells.get((row, column)) or Cell()).rel_l2 or 0.0 for row in self.rows]


def grid(results: list[PairResult], badge) -> Grid:
    """The overview grid of scanned pairs.

    Args:
        badge: maps a result to the status it shows (hierarchy.badge_status).
    """
    stacks = {s for s in (stack_of(r.pair.name) for r in results) if s}
    cells: dict[tuple[str, str], Cell] = {}
    layers: dict[str, tuple] = {}
    for result in results:
        where = place(result.pair.name, stacks)
        cell = cells.setdefault((where.row, where.module), Cell())
        cell.names.append(result.pair.name)
        cell.statuses.add(badge(result))
        diff, side = result.diff, result.a
        if diff is not None and diff.rms is not None and side is not None and side.l2 is not None:
            both = side.finite
            cell.delta_sq += diff.rms ** 2 * both
            cell.base_sq += side.l2 ** 2
        if where.layer is not None:
            layers[where.row] = (stack_of(result.pair.name) or "", where.layer)
    rows = sorted(layers, key=lambda r: layers[r])
    present = {column for row, column in cells if row != OUTSIDE}
    columns = [c for c in COLUMN_ORDER if c in present] + sorted(present - set(COLUMN_ORDER))
    outside = sorted(column for row, column in cells if row == OUTSIDE)
    return Grid(rows, columns, cells, outside)


@dataclass(frozen=True)
class Anomaly:
    name: str
    reason: str


def anomalies(results: list[PairResult], badge, outlier_decades: float = 1.0) -> list[Anomaly]:
    """What deserves a look, most serious first: NaN/Inf, shape and dtype changes, tensors on
    one side only, unreadable tensors, and tensors whose rel_l2 lies far outside the typical
    change of their module type across layers.

    A change is an outlier when its log10(rel_l2) is more than `outlier_decades` from the
    median of its module type and more than 3.5 robust standard deviations (MAD) away.
    """
    found: list[Anomaly] = []
    reasons = {"nonfinite": "holds NaN or Inf", "shape_mismatch": "shape changed", "dtype": "dtype changed",
               "only_a": "only in A", "only_b": "only in B", "error": "unreadable"}
    for kind in reasons:
        found += [Anomaly(r.pair.name, reasons[kind]) for r in results if badge(r) == kind
                  and not (kind in ("only_a", "only_b") and r.pair.tied_elsewhere)]
    by_module: dict[str, list[tuple[float, PairResult]]] = {}
    for r in results:
        rel = r.diff.rel_l2 if r.diff is not None else None
        if rel and rel > 0:
            by_module.setdefault(place(r.pair.name).module, []).append((math.log10(rel), r))
    for module, values in by_module.items():
        if len(values) < 4:
            continue
        logs = [v for v, _ in values]
        middle = statistics.median(logs)
        spread = 1.4826 * statistics.median(abs(v - middle) for v in logs)
        for value, r in values:
            distance = abs(value - middle)
            if distance > outlier_decades and (spread == 0 or distance > 3.5 * spread):
                factor = 10 ** (value - middle)
                direction = f"{factor:.0f}× larger" if factor > 1 else f"{1 / factor:.0f}× smaller"
                found.append(Anomaly(r.pair.name, f"change {direction} than typical for {module} across layers"))
    return found
