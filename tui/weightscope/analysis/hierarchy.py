"""The pairs of a comparison as a tree of dotted names, and the counts rolled up to its groups.

`model.layers.12.mlp.up_proj.weight` is the path model → layers → 12 → mlp → up_proj → weight;
children sort naturally (`layers.2` before `layers.10`). A `NameTree` holds the tree as
arrays, its nodes in the order the tree shows them, so that every group's tensors are one
run of `order` (`lo:hi`): a group's counts by status, its largest change and its most
changed members are reductions over that run (`Rollup`), with no object per tensor and
nothing to keep current but two arrays as results arrive.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import repeat

import numpy as np

from weightscope.compare import catalog as cat
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable

# What a line shows, most notable first: a group shows its members' first in this order.
SEVERITY = ("error", "nonfinite", "shape_mismatch", "dtype", "only_a", "only_b", "changed", "close",
            "pending", "value_equal", "identical", "factor")
CODE = {status: code for code, status in enumerate(SEVERITY)}
DIFFERS = np.array([s in {"error", "nonfinite", "shape_mismatch", "dtype", "only_a", "only_b", "changed", "close"}
                    for s in SEVERITY])
TOP = 8  # most-changed members a group lists


def matcher(pattern: str):
    """A name test: a glob when the pattern has * ? or [, else a case-insensitive substring."""
    if any(ch in pattern for ch in "*?["):
        return lambda name: fnmatchcase(name, pattern)
    lowered = pattern.lower()
    return lambda name: lowered in name.lower()


def natural_key(text: str) -> tuple:
    """Digits compare as numbers: 'layers.2' < 'layers.10'."""
    return tuple(int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", text))


def badges(catalog: Catalog, table: ResultTable, index: np.ndarray | None = None,
           flag_nonfinite: bool = True) -> np.ndarray:
    """What each pair's line shows (`SEVERITY` codes): the headers' verdict until it is read,
    then its scan status, outranked by NaN/Inf (unless `flag_nonfinite` is off: the status
    beside which that flag is shown) and by a change of stored dtype. A LoRA adapter's own
    parameter is a factor, whatever its side (NaN/Inf in it still shows)."""
    pairs = slice(None) if index is None else index
    known, status = catalog.known[pairs], table.status[pairs]
    from_headers = np.array([CODE[s] for s in ("pending", "error", "only_a", "only_b", "shape_mismatch", "dtype")],
                            np.int8)
    scanned = np.array([CODE[s] for s in results.STATUSES], np.int8)
    out = np.where(status == results.UNREAD, from_headers[known], scanned[np.maximum(status, 0)])
    equalish = np.isin(status, (results.IDENTICAL, results.VALUE_EQUAL, results.CLOSE, results.CHANGED))
    out = np.where(equalish & (known == cat.DTYPE), CODE["dtype"], out)
    out = np.where(catalog.factor[pairs] & (status != results.ERROR), CODE["factor"], out)
    if flag_nonfinite:
        # The NaN/Inf counts of the pairs read without error only: the table is large, and
        # results come a slice at a time.
        read = np.flatnonzero((status != results.UNREAD) & (status != results.ERROR))
        columns = [base + column for base in (c.FA, c.FB) for column in (c.FNAN, c.FPOSINF, c.FNEGINF)]
        rows = read if index is None else index[read]
        nonfinite = np.nan_to_num(table.values[np.ix_(rows, columns)]).sum(axis=1) > 0
        out[read[nonfinite]] = CODE["nonfinite"]
    return out.astype(np.int8)


@dataclass
class NameTree:
    """A tree of the names of some pairs (all, or those a filter keeps), as arrays.

    Nodes are numbered in the order the tree shows them (depth first, children in natural
    order); node 0 is the root. Each node's tensors are `order[lo[k]:hi[k]]`, and its subtree
    is the nodes k … end[k] − 1.

    Attributes:
        parts: each node's own part of the name ("" for the root).
        parent: each node's parent (-1 for the root).
        pair: the pair a node is (-1 for a group only).
        order: pair indices in the order the tree shows them.
        position: each pair's place in `order` (-1 when the filter left it out).
        node_of: each pair's node (-1 when left out).
        pattern: the filter that kept these pairs ("" for all).
    """

    parts: tuple[str, ...]
    parent: np.ndarray
    pair: np.ndarray
    end: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    order: np.ndarray
    position: np.ndarray
    node_of: np.ndarray
    pattern: str = ""

    def __len__(self) -> int:
        return len(self.parts)

    def children(self, node: int) -> list[int]:
        out, child = [], node + 1
        while child < self.end[node]:
            out.append(child)
            child = int(self.end[child])
        return out

    def ancestors(self, node: int) -> list[int]:
        """The node, its parent, … the root."""
        out = [node]
        while self.parent[out[-1]] >= 0:
            out.append(int(self.parent[out[-1]]))
        return out

    def path(self, node: int) -> str:
        return ".".join(self.parts[k] for k in reversed(self.ancestors(node)[:-1]))

    def is_group(self, node: int) -> bool:
        return self.end[node] > node + 1

    def tensors(self, node: int) -> int:
        return int(self.hi[node] - self.lo[node])


MAX_DEPTH = 64  # parts of a name the tree shows as levels; the rest of a deeper name is its last part


def build(catalog: Catalog, pattern: str = "") -> NameTree:
    """The name tree of the pairs whose names match `pattern` (all for "")."""
    return of_names(catalog.names, pattern)


def of_names(names: Sequence[str], pattern: str = "") -> NameTree:
    """The name tree of those of `names` (a pair's index is its place there) that match `pattern`.

    Built with array operations, not a round of Python per name: each name becomes a row of
    its parts' ranks (the natural order of the distinct parts), rows sort lexicographically,
    and a node starts wherever a row's part differs from the row before.
    """
    keep = matcher(pattern) if pattern else None
    kept = [i for i, name in enumerate(names) if keep(name)] if keep else range(len(names))
    named = [names[i] for i in kept] if keep else names
    n = len(named)
    rows, depth, distinct = ranks_by_template(named) or ranks_by_part(named)
    width = rows.shape[1]
    sort = np.lexsort(rows.T[::-1]) if width else np.arange(n)  # (lexsort's last key is the first)
    rows, depth = rows[sort], depth[sort]
    order = sort if keep is None else np.asarray(kept, np.int64)[sort]

    # The parts a row shares with the row before are nodes already made; the others are new.
    common = np.zeros(n, np.int64)
    if n > 1:
        differs = np.concatenate([rows[1:] != rows[:-1], np.ones((n - 1, 1), bool)], axis=1)
        common[1:] = differs.argmax(axis=1)
    level = np.arange(width)
    new = (level >= common[:, None]) & (level < depth[:, None])
    node = np.maximum.accumulate(np.where(new, np.cumsum(new.ravel()).reshape(new.shape), 0), axis=0)
    made_at, made_level = np.nonzero(new)  # in node order: row by row, parent before child
    count = len(made_at) + 1
    parent = np.zeros(count, np.int64)
    parent[0] = -1
    deeper = made_level > 0
    parent[1:][deeper] = node[made_at[deeper], made_level[deeper] - 1]
    pair = np.full(count, -1, np.int64)
    pair[node[np.arange(n), depth - 1]] = order
    lo = np.concatenate([[0], made_at])
    # A node is closed by the first later row that shares fewer parts than its level.
    hi = np.full(count, n, np.int64)
    for at in range(width):
        made = np.flatnonzero(made_level == at) + 1
        closing = np.flatnonzero(common <= at)
        after = np.searchsorted(closing, lo[made], side="right")
        hi[made] = np.append(closing, n)[after]
    end = np.concatenate([[1], 1 + np.cumsum(new.sum(axis=1))])[hi]
    position = np.full(len(names), -1, np.int64)
    position[order] = np.arange(n)
    node_of = np.full(len(names), -1, np.int64)
    leaves = np.flatnonzero(pair >= 0)
    node_of[pair[leaves]] = leaves
    strings = np.empty(len(distinct), object)
    strings[:] = distinct
    parts = ("", *strings[rows[new]].tolist())  # a tuple: see `catalog`
    return NameTree(parts, parent, pair, end, lo, hi, order, position, node_of, pattern)


def ranks_by_part(named: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(each name's row of part ranks, -1 after its end; each name's depth; the distinct parts
    in natural order, which the ranks index), ranking every part of every name."""
    n = len(named)
    depth = np.fromiter(map(str.count, named, repeat(".")), np.int64, n) + 1
    if n and depth.max() > MAX_DEPTH:
        depth = np.minimum(depth, MAX_DEPTH)
        flat = [part for name in named for part in name.split(".", MAX_DEPTH - 1)]
    else:
        flat = ".".join(named).split(".")  # every part of every name, in one call
    distinct = in_natural_order(set(flat))
    rank = {part: r for r, part in enumerate(distinct)}  # equal ranks: equal parts
    rows = np.full((n, int(depth.max(initial=0))), -1, np.int64)  # -1 after a name's end sorts it before its children
    flat = np.fromiter(map(rank.__getitem__, flat), np.int64, len(flat))
    starts = np.repeat(np.cumsum(depth) - depth, depth)
    rows[np.repeat(np.arange(n), depth), np.arange(len(flat)) - starts] = flat
    return rows, depth, distinct


TO_ZERO = str.maketrans("123456789", "000000000")
NAMES_PER_TEMPLATE = 16  # fewer on average, and ranking every part is as quick


def ranks_by_template(named: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """`ranks_by_part`'s answer, ranking only the parts that differ between names of one template.

    A model's names follow a few templates, a name with its digits as 0
    (`model.layers.00.mlp.experts.000.up_proj.weight`): 96,000 names, 770,000 parts, 28
    templates. Names of one template have their digits in the same places, so a part is
    constant there, or told apart by the number its digits spell: the distinct parts are
    found per template and part by arrays, and only they are ranked. None where the names
    do not fall into few templates, or a name holds a newline or is deeper than `MAX_DEPTH`.
    """
    n = len(named)
    joined = "\n".join(named)
    if not n or joined.count("\n") != n - 1:
        return None
    shapes = joined.translate(TO_ZERO).split("\n")
    templates = dict.fromkeys(shapes)
    if len(templates) * NAMES_PER_TEMPLATE > n:
        return None
    code = {template: k for k, template in enumerate(templates)}
    of = np.fromiter(map(code.__getitem__, shapes), np.int64, n)
    depth = np.array([template.count(".") + 1 for template in templates], np.int64)
    if depth.max() > MAX_DEPTH:
        return None
    members = np.split(np.argsort(of, kind="stable"), np.cumsum(np.bincount(of, minlength=len(templates)))[:-1])
    cells = []  # (a template's names, a level, each name's part there as an index into strings, strings)
    distinct: set[str] = set()
    for template, rows_k in zip(templates, members):
        names_k = [named[i] for i in rows_k.tolist()]
        chars = None
        start = 0
        for level, part in enumerate(template.split(".")):
            end = start + len(part)
            digits = [start + at for at, ch in enumerate(part) if ch == "0"]
            if not digits:
                cells.append((rows_k, level, None, [part]))
                distinct.add(part)
            else:
                if chars is None:
                    chars = np.array(names_k, f"<U{len(template)}").view(np.uint32).reshape(len(names_k), -1)
                spelt = chars[:, digits]
                if len(digits) <= 18:  # as one number (in int64): quicker to tell apart
                    spelt = (spelt.astype(np.int64) - ord("0")) @ 10 ** np.arange(len(digits) - 1, -1, -1)
                _, first, inverse = np.unique(spelt, axis=0, return_index=True, return_inverse=True)
                inverse = inverse.reshape(-1)
                strings = [names_k[i][start:end] for i in first.tolist()]
                cells.append((rows_k, level, inverse, strings))
                distinct.update(strings)
            start = end + 1
    ordered = in_natural_order(distinct)
    rank = {part: r for r, part in enumerate(ordered)}
    rows = np.full((n, int(depth.max())), -1, np.int64)
    for rows_k, level, inverse, strings in cells:
        ranks = np.fromiter(map(rank.__getitem__, strings), np.int64, len(strings))
        rows[rows_k, level] = ranks[0] if inverse is None else ranks[inverse]
    return rows, depth[of], ordered


def in_natural_order(parts) -> list[str]:
    return sorted(parts, key=lambda part: (natural_key(part), part))


class Rollup:
    """What each group of a tree shows, as results arrive: counts by status, the largest rel L2,
    the most changed members, parameters. Reductions over a group's run of tensors."""

    def __init__(self, tree: NameTree, badge: np.ndarray, rel_l2: np.ndarray, numel: np.ndarray,
                 present: tuple[np.ndarray, np.ndarray] | None = None):
        """
        Args:
            badge, rel_l2, numel: per pair (the whole catalog); kept in tree order here.
            present: per pair, whether A has it and whether B has it (default: both).
        """
        self.tree = tree
        self.badge = badge[tree.order].astype(np.int8)
        self.rel = rel_l2[tree.order].astype(np.float64)
        self.parameters_before = np.concatenate([[0], np.cumsum(numel[tree.order])])
        self.on_side_before = {side: np.concatenate([[0], np.cumsum(has[tree.order])]) if has is not None else None
                               for side, has in zip("ab", present or (None, None))}
        self._counts: dict[int, np.ndarray] = {}

    def update(self, index: np.ndarray, badge: np.ndarray, rel_l2: np.ndarray) -> None:
        """New statuses and rel L2 of these pairs (any, in the tree or not)."""
        where = self.tree.position[index]
        inside = where >= 0
        self.badge[where[inside]] = badge[inside]
        self.rel[where[inside]] = rel_l2[inside]
        self._counts.clear()

    def counts(self, node: int) -> np.ndarray:
        """Tensors of the node's subtree by status (`SEVERITY` codes)."""
        found = self._counts.get(node)
        if found is None:
            run = self.badge[self.tree.lo[node]:self.tree.hi[node]]
            found = self._counts[node] = np.bincount(run, minlength=len(SEVERITY))
        return found

    def status(self, node: int) -> str:
        """The most notable status in the subtree (a tensor's own, for a tensor)."""
        if self.tree.pair[node] >= 0 and not self.tree.is_group(node):
            return SEVERITY[self.badge[self.tree.position[self.tree.pair[node]]]]
        present = np.flatnonzero(self.counts(node))
        return SEVERITY[present[0]] if len(present) else "identical"

    def own_status(self, node: int) -> str | None:
        """The status of the node's own tensor; None for a group only."""
        pair = self.tree.pair[node]
        return SEVERITY[self.badge[self.tree.position[pair]]] if pair >= 0 else None

    def differing(self, node: int) -> int:
        return int(self.counts(node)[DIFFERS].sum())

    def weights(self, node: int) -> int:
        """The subtree's tensors that are model weights (its LoRA factors left out)."""
        return self.tree.tensors(node) - self.count(node, "factor")

    def on_side(self, node: int, side: str) -> bool:
        """Whether any tensor of the subtree exists on side "a" or "b"."""
        before = self.on_side_before[side]
        if before is None:
            return self.tree.tensors(node) > 0
        return bool(before[self.tree.hi[node]] > before[self.tree.lo[node]])

    def count(self, node: int, status: str) -> int:
        return int(self.counts(node)[CODE[status]])

    def parameters(self, node: int) -> int:
        return int(self.parameters_before[self.tree.hi[node]] - self.parameters_before[self.tree.lo[node]])

    def max_rel(self, node: int) -> float | None:
        run = self.rel[self.tree.lo[node]:self.tree.hi[node]]
        if not len(run) or np.isnan(run).all():
            return None
        return float(np.nanmax(run))

    def most_changed(self, node: int, count: int = TOP) -> list[tuple[int, float]]:
        """(pair, rel L2) of the subtree's tensors with the largest nonzero rel L2, largest first."""
        lo = self.tree.lo[node]
        run = np.nan_to_num(self.rel[lo:self.tree.hi[node]], nan=0.0)
        if not len(run):
            return []
        top = np.argpartition(-run, min(count, len(run) - 1))[:count] if len(run) > count else np.arange(len(run))
        top = top[np.argsort(-run[top], kind="stable")]
        return [(int(self.tree.order[lo + j]), float(run[j])) for j in top if run[j] > 0]

    def next_differing(self, after: int, step: int) -> int | None:
        """The next tensor (a position in tree order) after `after` whose status differs, going
        forward (step 1) or back (-1), wrapping around; None when none does."""
        differs = np.flatnonzero(DIFFERS[self.badge])
        if not len(differs):
            return None
        if step > 0:
            later = differs[differs > after]
            return int(later[0] if len(later) else differs[0])
        earlier = differs[differs < after]
        return int(earlier[-1] if len(earlier) else differs[-1])
