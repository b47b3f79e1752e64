"""Two trees side by side, A left and B right, as the two columns of one `Tree`.

Drawing both sides on each line of a single Tree keeps them in step by construction:
one cursor, one scroll offset, one expanded state. A name on one side only leaves that
side's column blank, as a side-by-side diff does. Children are added when a node first
expands (as `DirectoryTree` does), so a 100,000-tensor model opens at once.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from weightscope.analysis.hierarchy import NameNode
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


class DiffTree(Tree[NameNode]):
    """The tensor names of A and B, side by side, with a status badge per line."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("h,left", "collapse_or_parent", "Collapse", show=False),
        Binding("l,right", "expand_or_child", "Expand", show=False),
    ]

    def __init__(self, root: NameNode, single: bool = False, **kwargs):
        """
        Args:
            root: the name tree to show.
            single: one checkpoint only: no B column.
        """
        super().__init__("", data=root, **kwargs)
        self.single = single
        self.show_root = False
        self.guide_depth = 3
        self._tree_nodes_by_name: dict[int, TreeNode[NameNode]] = {}

    def on_mount(self) -> None:
        self.populate(self.root)
        self.root.expand()
        if self.root.children:
            self.move_cursor_to_line(0)

    def set_model(self, root: NameNode, expand_all: bool = False) -> None:
        """Show another name tree (a filtered one, say)."""
        # The old lines let go of the old tree: they are garbage in cycles, left for a full
        # collection (or frozen for good), and would keep a whole name tree alive. Their
        # events still on the way come with no data.
        for line in (self.root, *self._tree_nodes.values()):  # (clear() makes a root it does not list)
            line.data = None
        self.clear()
        self._tree_nodes_by_name.clear()
        self.root.data = root
        self.populate(self.root)
        if expand_all:
            for leaf in root.leaves():
                self.reveal(leaf, move=False)
        if self.root.children:
            self.unselect()  # clear() keeps the old line; a fresh move highlights the new first node
            self.move_cursor_to_line(0)
        else:
            self.cursor_line = -1  # nothing to show: no cursor node either

    def populate(self, node: TreeNode[NameNode]) -> None:
        """Add the children of `node` the first time they are needed."""
        if node.children or node.data is None or not node.data.children:  # (None: a line of a replaced tree)
            return
        for child in node.data.sorted_children():
            added = node.add("", data=child, allow_expand=bool(child.children))
            self._tree_nodes_by_name[id(child)] = added

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[NameNode]) -> None:
        self.populate(event.node)

    def reveal(self, target: NameNode, move: bool = True) -> None:
        """Expand the way down to `target` and (with `move`) put the cursor on it."""
        node = self.root
        for data in reversed(list(target.ancestors())[:-1]):
            self.populate(node)
            node = self._tree_nodes_by_name[id(data)]
            if data is not target:
                node.expand()
        if move:
            _ = self.last_line  # lay out the lines now, so the node knows its line
            self.move_cursor(node)
            self.scroll_to_node(node, animate=False)

    def refresh_nodes(self, nodes: list[NameNode]) -> None:
        """Redraw the lines of these nodes and their ancestors (new results arrived)."""
        seen = set()
        for name_node in nodes:
            for ancestor in name_node.ancestors():
                tree_node = self._tree_nodes_by_name.get(id(ancestor))
                if tree_node is not None and id(ancestor) not in seen:
                    seen.add(id(ancestor))
                    tree_node.refresh()

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
            node.expand()
        elif node.children:
            self.move_cursor(node.children[0])

    # Drawing

    def label_width(self, node: TreeNode[NameNode]) -> int:
        return max(0, self.scrollable_content_region.width - self.guides_width(node))

    def guides_width(self, node: TreeNode[NameNode]) -> int:
        depth = sum(1 for _ in self.path_of(node)) - 1
        return depth * self.guide_depth

    def path_of(self, node: TreeNode[NameNode]):
        path = []
        while node is not None and node is not self.root:
            path.append(node)
            node = node.parent
        return reversed(path)

    def get_label_width(self, node: TreeNode[NameNode]) -> int:
        return self.label_width(node)

    def b_guides(self, node: TreeNode[NameNode], present: bool) -> Text:
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

    def present(self, data: NameNode, side: str) -> bool:
        """Whether any tensor under this node exists on `side`."""
        missing = "only_b" if side == "a" else "only_a"
        return not data.tensors or data.counts.get(missing, 0) < data.tensors

    def side_text(self, node: TreeNode[NameNode], side: str, width: int) -> Text:
        """One side's label: expand icon, name part and, for a tensor, dtype and shape."""
        data = node.data
        if width <= 0:
            return Text()
        if not self.present(data, side):
            return Text(" " * width)
        icon = (self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE) if node.allow_expand else "  "
        text = Text(icon, style="dim")
        text.append(data.part)
        if data.pair is not None and not data.children:
            info = data.pair.a if side == "a" else data.pair.b
            other = data.pair.b if side == "a" else data.pair.a
            if info is not None:
                differs = other is not None and (other.stored_dtype, other.shape) != (info.stored_dtype, info.shape)
                text.append("  ")
                text.append(describe_tensor(info.stored_dtype, info.shape), "magenta" if differs else "dim")
        text.truncate(width, overflow="ellipsis", pad=True)
        return text

    def figure(self, data: NameNode) -> Text:
        """rel_l2 for a tensor; for a group, how many members differ and the largest rel_l2."""
        if data.pair is not None and not data.children:
            diff = data.result.diff if data.result and not self.single else None  # alone: no change to size
            value = badges.percent(diff.rel_l2) if diff is not None and diff.rel_l2 is not None else ""
        else:
            differing = data.differing
            largest = f" {badges.percent(data.max_rel)}" if data.max_rel else ""
            value = f"{differing}/{data.tensors}{largest}" if differing else ""
        return Text(value.rjust(FIGURE_WIDTH)[:FIGURE_WIDTH], style="dim")

    def status_of(self, data: NameNode) -> str:
        status = data.status
        return "read" if self.single and status == "identical" else status

    def render_label(self, node: TreeNode[NameNode], base_style: Style, style: Style) -> Text:
        data = node.data
        total = self.label_width(node) + self.guides_width(node)
        status = self.status_of(data)
        badge = Text(f" {badges.symbol(status)} ", style=badges.style(status))
        if self.single:
            a_width = total - self.guides_width(node) - BADGE_WIDTH - FIGURE_WIDTH
            text = Text.assemble(self.side_text(node, "a", a_width), badge, self.figure(data))
        else:
            inner = total - BADGE_WIDTH - FIGURE_WIDTH
            half = inner // 2
            guides = self.b_guides(node, self.present(data, "b"))
            text = Text.assemble(
                self.side_text(node, "a", half - self.guides_width(node)), badge, guides,
                self.side_text(node, "b", inner - half - guides.cell_len), self.figure(data))
        text.stylize(style)
        return text
