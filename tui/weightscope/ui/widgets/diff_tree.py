"""Two trees side by side, A left and B right, as the two columns of one `Tree`.

Drawing both sides on each line of a single Tree keeps them in step by construction:
one cursor, one scroll offset, one expanded state. A name on one side only leaves that
side's column blank, as a side-by-side diff does. Children are added when a node first
expands (as `DirectoryTree` does), so a 100,000-tensor model opens at once. A line's data is
its node's number in a `NameTree`; what it shows comes from the tree's `Rollup` and the
catalog, worked out when the line is drawn. A comparison's first line ("all tensors", node 0:
the root of the names) carries the verdict; selected, the detail pane shows it.
"""

from __future__ import annotations

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from weightscope.analysis.hierarchy import SEVERITY, NameTree, Rollup
from weightscope.analysis.hierarchy import badges as badges_of
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable
from weightscope.ui.widgets import badges

SHORT_DTYPES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16", "float64": "f64",
                "float8_e4m3fn": "f8e4m3", "float8_e5m2": "f8e5m2", "int64": "i64", "int32": "i32",
                "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool"}
BADGE_WIDTH = 3
FIGURE_WIDTH = 14
GUIDE_STYLE = Style(dim=True)


def describe_tensor(dtype: str | None, shape: tuple[int, ...] | None) -> str:
    if dtype is None:
        return "unreadable"
    dims = "×".join(map(str, shape)) if shape else "scalar"
    return f"{SHORT_DTYPES.get(dtype, dtype)} {dims}"


class DiffTree(Tree[int]):
    """The tensor names of A and B, side by side, with a status badge per line."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("h,left", "collapse_or_parent", "Collapse", show=False),
        Binding("l,right", "expand_or_child", "Expand", show=False),
    ]

    def __init__(self, catalog: Catalog, names: NameTree, rollup: Rollup, single: bool = False,
                 table: ResultTable | None = None, **kwargs):
        """
        Args:
            names, rollup: the name tree to show and what its groups hold.
            single: one checkpoint only: no B column.
            table: the results so far, for the status beside which NaN/Inf is flagged.
        """
        super().__init__("", data=0, **kwargs)
        self.catalog, self.names, self.rollup, self.table = catalog, names, rollup, table
        self.single = single
        self.show_root = False
        self.verdict = (Text("verdict after the scan", "dim"), Text())  # A's column, B's column
        self.verdict_line: TreeNode[int] | None = None  # a comparison's first line: the whole of it
        self.filtered = False
        self.guide_depth = 3
        self._lines: dict[int, TreeNode[int]] = {}  # node number -> its line, once added

    def on_mount(self) -> None:
        self.populate(self.root)
        self.root.expand()
        self.move_to_first()

    def move_to_first(self) -> None:
        """The cursor to the first line of tensors (the verdict's line is above it)."""
        first = 0 if self.verdict_line is None else 1
        if len(self.root.children) > first:
            self.move_cursor_to_line(first)

    def show_verdict(self, kind: Text, flags: Text) -> None:
        """What the first line says of the whole comparison: its kind under A, its flags under B."""
        self.verdict = (kind, flags)
        if self.verdict_line is not None:
            self.verdict_line.refresh()

    def set_model(self, names: NameTree, rollup: Rollup, expand_all: bool = False, filtered: bool = False) -> None:
        """Show another name tree (a filtered one, say: its first line then counts the tensors
        that match, beside the whole comparison's verdict)."""
        self.names, self.rollup = names, rollup
        self.filtered = filtered
        self.clear()
        self._lines.clear()
        self.verdict_line = None
        self.root.data = 0
        self.populate(self.root)
        if expand_all:
            for node in range(len(names)):
                if names.pair[node] >= 0:
                    self.reveal(node, move=False)
        if len(self.root.children) > (self.verdict_line is not None):
            self.unselect()  # clear() keeps the old line; a fresh move highlights the new first node
            self.move_to_first()
        else:
            self.cursor_line = -1  # nothing to show: no cursor node either

    def populate(self, line: TreeNode[int]) -> None:
        """Add the children of a line the first time they are needed."""
        if line.children or line.data is None or not self.names.is_group(line.data):
            return
        if line is self.root and not self.single:  # the whole comparison first: node 0, the root of the names
            self.verdict_line = line.add_leaf("", data=0)
        for child in self.names.children(line.data):
            self._lines[child] = line.add("", data=child, allow_expand=self.names.is_group(child))

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[int]) -> None:
        self.populate(event.node)

    def reveal(self, node: int, move: bool = True) -> None:
        """Expand the way down to `node` and (with `move`) put the cursor on it."""
        line = self.root
        for step in reversed(self.names.ancestors(node)[:-1]):
            self.populate(line)
            line = self._lines[step]
            if step != node:
                line.expand()
        if move:
            _ = self.last_line  # lay out the lines now, so the node knows its line
            self.move_cursor(line)
            self.scroll_to_node(line, animate=False)

    def line_of(self, node: int) -> TreeNode[int] | None:
        return self._lines.get(node)

    def refresh_lines(self) -> None:
        """Draw the lines on screen again (their statuses and figures moved on)."""
        top = round(self.scroll_offset.y)
        for y in range(top, min(top + self.size.height, self.last_line + 1)):
            line = self.get_node_at_line(y)
            if line is not None:
                line.refresh()

    def action_collapse_or_parent(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.children:
            node.collapse()
        elif node.parent is not None and node.parent is not self.root:
            self.move_cursor(node.parent)

    def action_expand_or_child(self) -> None:
        node = self.cursor_node
        if node is None or not node.allow_expand:
            return
        if not node.is_expanded:
            self.populate(node)  # now, not when the expansion's message comes: a key pressed next moves among them
            node.expand()
        elif node.children:
            self.move_cursor(node.children[0])

    # Drawing

    def label_width(self, node: TreeNode[int]) -> int:
        return max(0, self.scrollable_content_region.width - self.guides_width(node))

    def guides_width(self, node: TreeNode[int]) -> int:
        depth = sum(1 for _ in self.path_of(node)) - 1
        return depth * self.guide_depth

    def path_of(self, node: TreeNode[int]):
        path = []
        while node is not None and node is not self.root:
            path.append(node)
            node = node.parent
        return reversed(path)

    def get_label_width(self, node: TreeNode[int]) -> int:
        return self.label_width(node)

    def b_guides(self, node: TreeNode[int], present: bool) -> Text:
        """The guides the Tree draws left of A's label, drawn again left of B's (without the
        node's own branch where B lacks it)."""
        lines = self.LINES["default"]
        pad = max(0, self.guide_depth - 2)
        path = list(self.path_of(node))
        text = Text()
        for ancestor in path[1:-1]:
            characters = lines[0] if ancestor.is_last else lines[1]
            text.append(f"{characters[0]}{characters[1] * pad} ", GUIDE_STYLE)
        if len(path) > 1:
            characters = (lines[2] if node.is_last else lines[3]) if present else (
                lines[0] if node.is_last else lines[1])
            text.append(f"{characters[0]}{characters[1] * pad} ", GUIDE_STYLE)
        return text

    def present(self, node: int, side: str) -> bool:
        """Whether any tensor under this node exists on `side`."""
        return self.rollup.on_side(node, side)

    def side_text(self, line: TreeNode[int], side: str, width: int) -> Text:
        """One side's label: expand icon, name part and, for a tensor, dtype and shape."""
        node = line.data
        if width <= 0:
            return Text()
        if not self.present(node, side):
            return Text(" " * width)
        icon = (self.ICON_NODE_EXPANDED if line.is_expanded else self.ICON_NODE) if line.allow_expand else "  "
        text = Text(icon, style="dim")
        text.append(self.names.parts[node])
        pair = int(self.names.pair[node])
        if pair >= 0 and not self.names.is_group(node):
            mine, other = (self.catalog.a, self.catalog.b) if side == "a" else (self.catalog.b, self.catalog.a)
            if mine.name[pair] is not None:
                dtype, shape = mine.stored_dtype(pair), mine.shape[pair]
                differs = other.name[pair] is not None and (other.stored_dtype(pair), other.shape[pair]) != (dtype, shape)
                text.append("  ")
                text.append(describe_tensor(dtype, shape), "magenta" if differs else "dim")
        text.truncate(width, overflow="ellipsis", pad=True)
        return text

    def root_label(self, width: int, style: Style) -> Text:
        """'all tensors' and the verdict's kind in A's column, the whole comparison's badge, the
        verdict's flags in B's column, and how many members differ."""
        status = self.status_of(0)
        badge = Text(f" {badges.symbol(status)} ", style=badges.style(status))
        inner = width - BADGE_WIDTH - FIGURE_WIDTH
        half = inner // 2
        kind, flags = (part.copy() for part in self.verdict)
        left = Text.assemble(("matching", "bold"), "  whole model: ", kind) if self.filtered else \
            Text.assemble(("all tensors", "bold"), "  ", kind)
        left.truncate(half, overflow="ellipsis", pad=True)
        flags.truncate(inner - half, overflow="ellipsis", pad=True)
        text = Text.assemble(left, badge, flags, self.figure(0))
        text.stylize(style)
        return text

    def figure(self, node: int) -> Text:
        """rel_l2 for a tensor; for a group, how many members differ and the largest rel_l2."""
        pair = int(self.names.pair[node])
        if pair >= 0 and not self.names.is_group(node):
            rel = self.rollup.rel[self.names.position[pair]]
            value = badges.percent(float(rel)) if not self.single and rel == rel else ""
        else:
            differing = self.rollup.differing(node)
            largest = self.rollup.max_rel(node)
            shown = f" {badges.percent(largest)}" if largest and not self.single else ""
            value = f"{differing}/{self.rollup.weights(node)}{shown}" if differing else ""
        return Text(value.rjust(FIGURE_WIDTH)[:FIGURE_WIDTH], style="dim")

    def beside_flag(self, node: int) -> str:
        """The most notable status of the node's tensors, NaN/Inf left to its flag."""
        run = self.names.order[self.names.lo[node]:self.names.hi[node]]
        codes = np.bincount(badges_of(self.catalog, self.table, run, flag_nonfinite=False), minlength=len(SEVERITY))
        present = np.flatnonzero(codes)
        status = SEVERITY[present[0]] if len(present) else "identical"
        return "read" if self.single and status == "identical" else status

    def status_of(self, node: int) -> str:
        status = self.rollup.status(node)
        return "read" if self.single and status == "identical" else status

    def render_label(self, line: TreeNode[int], base_style: Style, style: Style) -> Text:
        node = line.data
        total = self.label_width(line) + self.guides_width(line)
        if line is self.verdict_line:
            return self.root_label(total, style)
        status = self.status_of(node)
        if status == "nonfinite" and self.table is not None:  # the flag beside the status it outranks
            beside = self.beside_flag(node)
            badge = Text.assemble((badges.symbol(beside), badges.style(beside)), ("! ", badges.style("nonfinite")))
        else:
            badge = Text(f" {badges.symbol(status)} ", style=badges.style(status))
        if self.single:
            a_width = total - self.guides_width(line) - BADGE_WIDTH - FIGURE_WIDTH
            text = Text.assemble(self.side_text(line, "a", a_width), badge, self.figure(node))
        else:
            inner = total - BADGE_WIDTH - FIGURE_WIDTH
            half = inner // 2
            guides = self.b_guides(line, self.present(node, "b"))
            text = Text.assemble(
                self.side_text(line, "a", half - self.guides_width(line)), badge, guides,
                self.side_text(line, "b", inner - half - guides.cell_len), self.figure(node))
        text.stylize(style)
        return text
