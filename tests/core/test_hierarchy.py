"""The name tree's roll-ups: counts and most-changed members kept current as results arrive."""

from __future__ import annotations

import random

from weightscope.analysis import hierarchy
from weightscope.compare.align import Pair
from weightscope.sources.checkpoint import TensorInfo
from weightscope.compare.scan import PairResult
from weightscope.compare.stats import DiffStats


def pair(name: str) -> Pair:
    info = TensorInfo(name, "float32", (4,), "f")
    return Pair(name, info, info)


def result(p: Pair, rel: float) -> PairResult:
    diff = DiffStats(rel, None, rel, rel, rel, None, 1.0, 1.0 if rel else 0.0, 4 if rel else 0, 0, 0.0, 0.0)
    return PairResult(p, "changed" if rel else "identical", diff=diff)


def reference(node: hierarchy.NameNode) -> list[str]:
    """The most-changed members by walking the whole subtree."""
    ranked = sorted(((n.rel_l2, n.path) for n in node.walk() if n.rel_l2), key=lambda item: -item[0])
    return [path for _, path in ranked[:hierarchy.TOP]]


def test_groups_rank_members_as_results_arrive_and_change():
    pairs = [pair(f"model.layers.{layer}.{module}.weight") for layer in range(12)
             for module in ("q_proj", "k_proj", "mlp.up_proj", "mlp.down_proj")]
    names = hierarchy.build(pairs)
    rng = random.Random(0)
    groups = [names.root, names.root.children["model"], names.nodes["model.layers.3.q_proj.weight"].parent.parent]
    for step in range(600):
        p = rng.choice(pairs)
        # A mix of zeros (never ranked), ties and values that rise and fall for the same tensor.
        names.apply([result(p, rng.choice([0.0, 0.5, rng.random(), rng.random() / 100]))])
        for group in groups:
            got = [n.path for n in group.most_changed()]
            assert [names.nodes[path].rel_l2 for path in got] == \
                [names.nodes[path].rel_l2 for path in reference(group)], f"step {step}, {group.path or 'root'}"


def test_most_changed_of_a_group_lists_only_its_members_largest_first():
    pairs = [pair(name) for name in ("a.x.weight", "a.y.weight", "b.x.weight")]
    names = hierarchy.build(pairs)
    names.apply([result(pairs[0], 0.01), result(pairs[1], 0.3), result(pairs[2], 0.9)])
    assert [n.path for n in names.root.children["a"].most_changed()] == ["a.y.weight", "a.x.weight"]
    assert [n.path for n in names.root.most_changed(2)] == ["b.x.weight", "a.y.weight"]
    names.apply([result(pairs[2], 0.0)])  # b.x came back unchanged: it leaves every ranking
    assert [n.path for n in names.root.most_changed()] == ["a.y.weight", "a.x.weight"]


def test_a_tree_holds_no_cycles_and_comes_apart_a_node_at_a_time():
    import gc
    import weakref

    pairs = [pair(f"model.layers.{i}.mlp.{m}.weight") for i in range(3) for m in ("up", "down")]
    names = hierarchy.build(pairs, [result(p, 0.1 * (i + 1)) for i, p in enumerate(pairs)])
    layer = names.root.children["model"].children["layers"].children["1"]
    assert layer.parent.path == "model.layers" and layer.differing == 2
    root = weakref.ref(names.root)
    gc.disable()  # freed by reference counting alone
    try:
        del names
        assert root() is None and layer.parent is None  # only what is held elsewhere lives on
        assert [n.path for n in layer.leaves()] == ["model.layers.1.mlp.down.weight", "model.layers.1.mlp.up.weight"]
    finally:
        gc.enable()
    names = hierarchy.build(pairs)
    kept = names.nodes["model.layers.0.mlp.up.weight"]
    names.take_apart()
    assert names.nodes == {} and names.root.children == {} and names.root.top == []
    assert kept.pair is pairs[0] and kept.status == "pending"  # a node held elsewhere still answers
