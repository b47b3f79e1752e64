"""What a run's figures say: group roll-ups per step, and the flags raised over the run.

Groups are the model's layers (`model.layers.3`) and, outside them, each module
(`model.embed_tokens`); a group's figure at a step is its tensors' sums added up, so it is
weighted by their parameters: drift √(Σ‖S−R‖²/Σ‖R‖²), cosine ΣR·S/√(ΣR²·ΣS²), update
√(Σ‖S−P‖²/Σ‖P‖²), over the tensors where each is defined. The flags' definitions are the
README's ("Training runs"); each names a step, the tensors and a sentence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from weightscope.analysis.anatomy import LAYER
from weightscope.analysis.verdict import layer_ranges, listed
from weightscope.compare.run_columns import ABSMAX, NONFINITE, SQ
from weightscope.compare.run_plan import RunCatalog
from weightscope.compare.run_results import RunTable, cosine_of, ratio

SEVERITIES = ("info", "warn", "error")
FLAGS = {"first_nonfinite": "error", "reverted": "warn", "stalled": "warn", "exploding": "warn", "stopped": "warn",
         "frozen": "info"}
REVERT = 10.0  # drift this many times smaller than the predecessor's: turned back
GROWTH_RUN = 10.0  # a norm or absmax this many times the reference's
GROWTH_STEP = 2.0  # ... or its predecessor's
ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -9}
WHOLE = "all tensors"


@dataclass(frozen=True)
class RunFlag:
    """A flag over the run, shaped as the verdict's: `step` is the step's number (its position
    in the run, 1 for the first after the reference, where its name gives none); `index` is its
    column in the run's tables (0 for the first step); None for flags of the whole run."""

    code: str
    severity: str
    step: int | None
    tensors: list[str]
    message: str
    index: int | None = None

    def json(self) -> dict:
        return {"code": self.code, "severity": self.severity, "step": self.step, "tensors": self.tensors,
                "message": self.message}


def failing(flags: list[RunFlag], severity: str) -> list[RunFlag]:
    """The flags at `severity` or worse (`--fail-on`)."""
    floor = SEVERITIES.index(severity)
    return [f for f in flags if SEVERITIES.index(f.severity) >= floor]


# Groups


def group_of(name: str) -> str:
    """A tensor's group: its layer (`model.layers.3`), else its module (`model.embed_tokens`)."""
    found = LAYER.match(name)
    if found is not None:
        return f"{found.group(1)}.{int(found.group(2))}"
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass(frozen=True)
class Groups:
    """Groups in natural order, each tensor's group, and each group's figures [group, step]
    (`WHOLE` first: every tensor)."""

    labels: list[str]
    members: np.ndarray  # each tensor's group (an index into labels)
    drift: np.ndarray
    cosine: np.ndarray
    update: np.ndarray


def groups(catalog: RunCatalog, table: RunTable) -> Groups:
    from weightscope.analysis.hierarchy import natural_key

    names = [group_of(name) for name in catalog.names]
    labels = sorted(set(names), key=natural_key)
    code = {label: k + 1 for k, label in enumerate(labels)}
    members = np.fromiter(map(code.__getitem__, names), np.int64, len(names))
    sums = table.rollup_columns()
    count = len(labels) + 1
    added = {}
    for key, values in sums.items():  # [group, step]: each group's tensors added up, then the whole model
        out = np.zeros((count, table.steps))
        np.add.at(out, members, values)
        out[0] = values.sum(axis=0)
        added[key] = out
    return Groups([WHOLE, *labels], members, ratio(added["dd"], added["rr"]),
                  cosine_of(added["rs"], added["rr"], added["ss"]), ratio(added["uu"], added["pp"]))


# Flags


def label(catalog: RunCatalog, index: int) -> str:
    """A checkpoint as messages name it: its directory's or file's name."""
    return os.path.basename(os.path.normpath(catalog.points[index].path))


def step_of(catalog: RunCatalog, t: int) -> int:
    """A step's number for a flag (its position in the run where its name gives none)."""
    number = catalog.points[t + 1].step
    return number if number is not None else t + 1


def roundoff(catalog: RunCatalog) -> float:
    """The unit roundoff of the float type holding most of the reference's parameters."""
    weight: dict[str, int] = {}
    for dtype, numel in zip(catalog.dtype[0], catalog.numel.tolist()):
        if dtype in ROUNDOFF:
            weight[dtype] = weight.get(dtype, 0) + numel
    return ROUNDOFF[max(weight, key=weight.get)] if weight else ROUNDOFF["float32"]


def described(catalog: RunCatalog, rows: np.ndarray) -> str:
    """Tensors in the fewest words: whole layers as ranges ('layers 0–1'), whole modules by
    their name, other tensors by theirs."""
    chosen = set(rows.tolist())
    by_group: dict[str, list[int]] = {}
    for i, name in enumerate(catalog.names):
        by_group.setdefault(group_of(name), []).append(i)
    layers, others = [], []
    for group, members in by_group.items():
        mine = [i for i in members if i in chosen]
        if not mine:
            continue
        if len(mine) == len(members):
            found = LAYER.match(group + ".")
            (layers if found else others).append(found.group(2) if found else group)
        else:
            others += [catalog.names[i] for i in mine]
    words = others[:]
    if layers:
        words.append(layer_ranges(layers))
    return listed(words) if len(words) > 2 else " and ".join(words)


def flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    """Every flag over the run, the most severe first, then by step."""
    found = (nonfinite_flags(catalog, table) + reverted_flags(catalog, table) + stalled_flags(catalog, table)
             + exploding_flags(catalog, table) + stopped_flags(catalog, table) + frozen_flags(catalog, table))
    return sorted(found, key=lambda f: (-SEVERITIES.index(f.severity), f.index if f.index is not None else -1))


def moving(table: RunTable) -> np.ndarray:
    """Tensors that changed at some step (bytes unlike the predecessor's)."""
    compared = table.same[:, 1:] != 0
    return (compared & ~table.same_as_predecessor()).any(axis=1)


def frozen(table: RunTable) -> np.ndarray:
    """Tensors read at every checkpoint, identical to the reference at every step."""
    return table.comparable.all(axis=1) & table.same_as_reference().all(axis=1)


def nonfinite_flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    before = np.nan_to_num(table.reference(NONFINITE), nan=0.0)
    grown = table.nonfinite() > before[:, None]
    steps = np.flatnonzero(grown.any(axis=0))
    if not len(steps):
        return []
    t = int(steps[0])
    rows = np.flatnonzero(grown[:, t])
    names = [catalog.names[i] for i in rows]
    count = int(table.nonfinite()[rows, t].sum())
    return [RunFlag("first_nonfinite", "error", step_of(catalog, t), names,
                    f"{label(catalog, t + 1)} is the first checkpoint with NaN/Inf: {count:,} value{'' if count == 1 else 's'} in "
                    f"{listed(names)}", t)]


def stalled_flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    """A step identical to its predecessor in every tensor both hold, or whose update over the
    tensors that move at all is below the rounding of the model's type."""
    out = []
    live = moving(table)
    compared = table.comparable[:, 1:] & table.comparable[:, :-1]
    same = table.same_as_predecessor()
    sums = table.rollup_columns()
    floor = roundoff(catalog)
    for t in range(table.steps):
        held = compared[:, t]
        if not held.any():
            continue
        before, here = label(catalog, t), label(catalog, t + 1)
        if same[held, t].all():
            out.append(RunFlag("stalled", "warn", step_of(catalog, t), [],
                               f"{here} is identical to {before} in every tensor: training stalled, or the same "
                               "weights were saved twice", t))
            continue
        rows = held & live
        update = ratio(sums["uu"][rows, t].sum(), sums["pp"][rows, t].sum())
        if update < floor:
            out.append(RunFlag("stalled", "warn", step_of(catalog, t), [],
                               f"{here} moved {update:.2g} from {before} (‖ΔW‖/‖W‖ of the tensors that train), "
                               f"below the rounding of the model's type ({floor:.2g}): the updates are lost", t))
    return out


def reverted_flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    """Tensors that had moved away from the reference and at a step are equal to it again, or
    `REVERT` times closer than at the step before."""
    out = []
    drift = table.drift()
    back = table.same_as_reference()
    for t in range(1, table.steps):
        before = drift[:, t - 1]
        moved = np.nan_to_num(before) > 0
        turned = moved & (back[:, t] | (np.nan_to_num(drift[:, t], nan=np.inf) * REVERT < before))
        rows = np.flatnonzero(turned)
        if not len(rows):
            continue
        whole = turned.sum() == moved.sum()
        what = "every tensor that had moved" if whole else described(catalog, rows)
        how = "equal to the reference again" if back[rows, t].all() else \
            f"at least {REVERT:g}× closer to the reference than at {label(catalog, t)}"
        out.append(RunFlag("reverted", "warn", step_of(catalog, t), [catalog.names[i] for i in rows],
                           f"{label(catalog, t + 1)}: {what} is {how}", t))
    return out


def exploding_flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    """Norms or absmax more than `GROWTH_RUN` times the reference's, or `GROWTH_STEP` times the
    predecessor's (from a nonzero figure)."""
    out = []
    for what, now, first in (("norm", table.norm(), table.reference(SQ)),
                             ("absmax", table.absmax(), table.reference(ABSMAX))):
        with np.errstate(divide="ignore", invalid="ignore"):
            run = np.where(first[:, None] > 0, now / first[:, None], np.nan)
            earlier = np.concatenate([first[:, None], now[:, :-1]], axis=1)
            step = np.where(earlier > 0, now / earlier, np.nan)
        for kind, growth, limit in (("over the run", run, GROWTH_RUN), ("in one step", step, GROWTH_STEP)):
            over = np.nan_to_num(growth) > limit
            if not over.any():
                continue
            t = int(np.flatnonzero(over.any(axis=0))[0])
            rows = np.flatnonzero(over.any(axis=1))
            largest = np.nanmax(np.where(over, growth, np.nan)[rows], axis=1)
            rows = rows[np.argsort(-largest, kind="stable")]
            names = [catalog.names[i] for i in rows]
            base = "the reference's" if kind == "over the run" else "the checkpoint before's"
            out.append(RunFlag("exploding", "warn", step_of(catalog, t), names,
                               f"{what} grew more than {limit:g}× {base} {kind} (first at {label(catalog, t + 1)}; "
                               f"{names[0]} {np.max(largest):.3g}×): {listed(names)}", t))
    return out


def frozen_flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    rows = np.flatnonzero(frozen(table))
    if not len(rows) or not moving(table).any():
        return []
    return [RunFlag("frozen", "info", None, [catalog.names[i] for i in rows],
                    f"{described(catalog, rows)} never changed (identical to the reference at every step)")]


def stopped_flags(catalog: RunCatalog, table: RunTable) -> list[RunFlag]:
    """Tensors that changed, then stayed identical from step k on (two checkpoints at least),
    while other tensors still changed at those steps."""
    same = table.same_as_predecessor() & (table.same[:, 1:] != 0)
    steps = table.steps
    # from k on: identical at k and every later step
    tail = np.flip(np.logical_and.accumulate(np.flip(same, axis=1), axis=1), axis=1)
    start = np.where(tail.any(axis=1), steps - tail.sum(axis=1), steps)
    changed_upto = np.logical_or.accumulate(~same, axis=1)
    changed_before = (start > 0) & changed_upto[np.arange(len(start)), np.maximum(start - 1, 0)]
    others_move = ~same.all(axis=0)  # some tensor changed at that step
    out = []
    for k in sorted(set(start.tolist())):
        if k > steps - 2 or not others_move[k:].all():
            continue
        rows = np.flatnonzero((start == k) & changed_before)
        if not len(rows):
            continue
        out.append(RunFlag("stopped", "warn", step_of(catalog, k), [catalog.names[i] for i in rows],
                           f"{described(catalog, rows)} stopped changing at {label(catalog, k + 1)} (identical from "
                           "there on) while other tensors still changed", k))
    return out


# Layers × steps


@dataclass(frozen=True)
class LayerSteps:
    """Drift of one module type per layer (rows) and step (columns): each cell's tensors' sums
    added up, √(Σ‖S−R‖²/Σ‖R‖²), NaN where undefined; `pending`: some tensor of the cell not read
    yet at that step; `members`: each row's tensors (catalog indices)."""

    module: str
    modules: list[str]
    rows: list[str]
    drift: np.ndarray
    pending: np.ndarray
    members: list[list[int]]


def layer_modules(catalog: RunCatalog) -> list[str]:
    """The module types found inside the layers, in the overview's column order."""
    from weightscope.analysis.anatomy import COLUMN_ORDER, place

    found = {place(name).module for name in catalog.names if place(name).layer is not None}
    return sorted(found, key=lambda m: (COLUMN_ORDER.index(m) if m in COLUMN_ORDER else len(COLUMN_ORDER), m))


def layer_steps(catalog: RunCatalog, table: RunTable, module: str | None = None) -> LayerSteps:
    """The layers × steps grid of `module` (the first module type when None or not found)."""
    from weightscope.analysis.anatomy import place
    from weightscope.analysis.hierarchy import natural_key
    from weightscope.compare.run_columns import PENDING

    modules = layer_modules(catalog)
    if module not in modules:
        module = modules[0] if modules else ""
    by_row: dict[str, list[int]] = {}
    for i, name in enumerate(catalog.names):
        where = place(name)
        if where.layer is not None and where.module == module:
            by_row.setdefault(where.row, []).append(i)
    rows = sorted(by_row, key=natural_key)
    sums = table.rollup_columns()
    dd = np.array([sums["dd"][by_row[r]].sum(axis=0) for r in rows]).reshape(len(rows), table.steps)
    rr = np.array([sums["rr"][by_row[r]].sum(axis=0) for r in rows]).reshape(len(rows), table.steps)
    pending = np.array([(table.status[by_row[r]] == PENDING).any(axis=0) for r in rows], bool).reshape(
        len(rows), table.steps)
    return LayerSteps(module, modules, rows, ratio(dd, rr), pending, [by_row[r] for r in rows])
