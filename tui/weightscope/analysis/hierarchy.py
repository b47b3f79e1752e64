"""The pairs of a comparison as a tree of dotted names, with counts rolled up to every group.

`model.layers.12.mlp.up_proj.weight` becomes the path model → layers → 12 → mlp →
up_proj → weight. Children sort naturally (`layers.2` before `layers.10`). Each node keeps
its subtree's counts by status and its most-changed members, so a group shows "7/9 changed"
and its top tensors without walking its members, and a result arriving for one tensor
updates only its ancestors.
"""

from __future__ import annotations

import heapq
import re
import weakref
from fnmatch import fnmatchcase
from dataclasses import dataclass, field

from weightscope.compare.align import Pair
from weightscope.compare.scan import PairResult

# Most notable first: the status a group shows is its members' first in this order.
SEVERITY = ("error", "nonfinite", "shape_mismatch", "dtype", "only_a", "only_b", "changed", "close",
            "pending", "value_equal", "identical")
DIFFERS = {"error", "nonfinite", "shape_mismatch", "dtype", "only_a", "only_b", "changed", "close"}
TOP = 8  # how many most-changed members each group keeps track of


def matcher(pattern: str):
    """A name test: a glob when the pattern has * ? or [, else a case-insensitive substring."""
    if any(ch in pattern for ch in "*?["):
        return lambda name: fnmatchcase(name, pattern)
    lowered = pattern.lower()
    return lambda name: lowered in name.lower()


def natural_key(text: str) -> tuple:
    """Digits compare as numbers: 'layers.2' < 'layers.10'."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def known_status(pair: Pair) -> str:
    """What the headers alone say about a pair: a final status, or 'pending' until its data is read."""
    a, b = pair.a, pair.b
    if (a and a.error) or (b and b.error):
        return "error"
    if b is None:
        return "only_a"
    if a is None:
        return "only_b"
    if a.shape != b.shape:
        return "shape_mismatch"
    # A computed tensor (W + ΔW) is float32 because it is computed in float32, not because
    # anything stored changed type: only stored types count as a dtype change.
    stored_change = a.stored_dtype != b.stored_dtype and a.origin is None and b.origin is None
    return "dtype" if stored_change else "pending"


def badge_status(result: PairResult) -> str:
    """The status a tensor shows once read: NaN/Inf and dtype changes outrank the scan status."""
    if result.status != "error" and any(s is not None and s.nonfinite for s in (result.a, result.b)):
        return "nonfinite"
    if result.status in ("identical", "value_equal", "close", "changed"):
        return "dtype" if known_status(result.pair) == "dtype" else result.status
    return result.status


@dataclass(eq=False, repr=False)  # the generated repr would walk the whole tree
class NameNode:
    """One part of a dotted name; a tensor where `pair` is set (a node can also have children).

    Attributes:
        counts: statuses of every tensor in the subtree (this node's own included).
        result: the scan result of this node's tensor, once known.
        max_rel: the largest rel_l2 in the subtree, once known.
        top: the subtree's tensors with the largest nonzero rel_l2, largest first (at most `TOP`).
    """

    part: str
    path: str
    # Weak, so that a tree holds no reference cycles: one dropped (a filter's, replaced on the
    # next key) is freed at once instead of waiting for a full collection that stalls the UI.
    parent_ref: weakref.ref[NameNode] | None = None
    pair: Pair | None = None
    result: PairResult | None = None
    children: dict[str, NameNode] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    max_rel: float | None = None
    top: list[NameNode] = field(default_factory=list)
    _sorted: list[NameNode] | None = None

    @property
    def parent(self) -> NameNode | None:
        return self.parent_ref() if self.parent_ref is not None else None

    @property
    def status(self) -> str:
        """The most notable status in the subtree (a tensor's own, for a tensor)."""
        return next((s for s in SEVERITY if self.counts.get(s)), "identical")

    @property
    def own_status(self) -> str | None:
        """This node's tensor's status; None for a pure group."""
        if self.pair is None:
            return None
        return badge_status(self.result) if self.result else known_status(self.pair)

    @property
    def differing(self) -> int:
        """How many tensors in the subtree differ in any way."""
        return sum(self.counts.get(s, 0) for s in DIFFERS)

    @property
    def tensors(self) -> int:
        return sum(self.counts.values())

    def sorted_children(self) -> list[NameNode]:
        if self._sorted is None:
            self._sorted = sorted(self.children.values(), key=lambda n: natural_key(n.part))
        return self._sorted

    def leaves(self):
        """Every tensor node in the subtree, in natural order."""
        if self.pair is not None:
            yield self
        for child in self.sorted_children():
            yield from child.leaves()

    @property
    def rel_l2(self) -> float | None:
        """This node's tensor's rel_l2, once known."""
        diff = self.result.diff if self.result is not None else None
        return diff.rel_l2 if diff is not None else None

    def most_changed(self, count: int = TOP) -> list[NameNode]:
        """The tensors of the subtree with the largest rel_l2, largest first (`count` ≤ `TOP`)."""
        return self.top[:count]

    def rank(self, member: NameNode, old_rel: float | None) -> None:
        """Keep `top` current now that `member`'s rel_l2 is known (it was `old_rel`)."""
        rel, top = member.rel_l2, self.top
        if member in top:
            if old_rel is not None and (rel or 0) < old_rel and len(top) == TOP:
                # It fell inside a full list: a member outside may now outrank it.
                ranked = (n for n in self.walk() if n.rel_l2)
                self.top = heapq.nlargest(TOP, ranked, key=lambda n: n.rel_l2)
                return
            top.remove(member)
        elif not rel or (len(top) == TOP and rel <= top[-1].rel_l2):
            return  # most results: not among the largest
        if rel:
            top.append(member)
            top.sort(key=lambda n: n.rel_l2, reverse=True)
            del top[TOP:]

    def walk(self):
        """Every node of the subtree, in no particular order."""
        stack = [self]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            yield node

    def __repr__(self) -> str:
        return f"NameNode({self.path!r})"

    def ancestors(self):
        node = self
        while node is not None:
            yield node
            node = node.parent


@dataclass
class Names:
    """A name tree: its root and every tensor's node by pair name."""

    root: NameNode
    nodes: dict[str, NameNode]
    _order: list[NameNode] | None = None

    @property
    def order(self) -> list[NameNode]:
        """Tensor nodes in the order the tree shows them (computed on first use)."""
        if self._order is None:
            self._order = list(self.root.leaves())
        return self._order

    def take_apart(self) -> None:
        """Let go of the tree a node at a time (for a background thread): a tree dropped whole
        is freed in one step that holds the interpreter, keys included, for 0.1 s on 100,000
        tensors. Nodes still held elsewhere stay usable, without their children."""
        self.nodes, self._order = {}, None
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            node.children, node.top, node._sorted = {}, [], None

    def apply(self, results) -> list[NameNode]:
        """Record results of pairs in this tree; returns the nodes that changed."""
        changed = []
        for result in results:
            node = self.nodes.get(result.pair.name)
            if node is not None:
                apply(node, result)
                changed.append(node)
        return changed


def build(pairs: list[Pair], results=()) -> Names:
    """The tree of all pairs' names, with statuses known from headers counted in, and the
    given results recorded."""
    root = NameNode("", "")
    nodes: dict[str, NameNode] = {}
    for pair in pairs:
        node = root
        for part in pair.name.split("."):
            child = node.children.get(part)
            if child is None:
                path = f"{node.path}.{part}" if node.path else part
                child = node.children[part] = NameNode(part, path, weakref.ref(node))
            node = child
        node.pair = pair
        nodes[pair.name] = node
        status, numel = known_status(pair), (pair.a or pair.b).numel
        while node is not None:
            node.counts[status] = node.counts.get(status, 0) + 1
            node.parameters += numel
            node = node.parent
    names = Names(root, nodes)
    names.apply(results)
    return names


def apply(node: NameNode, result: PairResult) -> None:
    """Record a tensor's result, moving its count from the old status to the new one."""
    old, old_rel = node.own_status, node.rel_l2
    node.result = result
    new, rel = badge_status(result), node.rel_l2
    for ancestor in node.ancestors():
        if old is not None:
            ancestor.counts[old] -= 1
        ancestor.counts[new] = ancestor.counts.get(new, 0) + 1
        if rel is not None and (ancestor.max_rel is None or rel > ancestor.max_rel):
            ancestor.max_rel = rel
        ancestor.rank(node, old_rel)
