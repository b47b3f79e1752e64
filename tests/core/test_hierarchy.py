"""The name tree as arrays, and its groups' roll-ups as results arrive: counts, the largest
change, the most changed members, the next tensor that differs."""

from __future__ import annotations

import random

import numpy as np

from weightscope.analysis import hierarchy
from weightscope.compare import catalog as cat
from weightscope.compare.align import Alignment, Pair
from weightscope.sources.checkpoint import Checkpoint, TensorInfo


def catalog_of(names: list[str]) -> cat.Catalog:
    infos = {name: TensorInfo(name, "float32", (4,), "f") for name in names}
    checkpoint = Checkpoint("m", "safetensors", ["f"], infos)
    return cat.build(checkpoint, checkpoint, Alignment([Pair(n, infos[n], infos[n]) for n in names], []))


def paths(tree: hierarchy.NameTree) -> list[str]:
    return [tree.path(node) for node in range(1, len(tree))]


def test_nodes_come_in_the_order_the_tree_shows_them_with_numbers_in_natural_order():
    names = ["model.layers.10.w", "model.layers.2.w", "model.embed.weight", "lm_head.weight", "model.layers.2.b"]
    tree = hierarchy.build(catalog_of(names))
    assert paths(tree) == ["lm_head", "lm_head.weight", "model", "model.embed", "model.embed.weight",
                           "model.layers", "model.layers.2", "model.layers.2.b", "model.layers.2.w",
                           "model.layers.10", "model.layers.10.w"]
    order = [names[i] for i in tree.order]
    assert order == ["lm_head.weight", "model.embed.weight", "model.layers.2.b", "model.layers.2.w",
                     "model.layers.10.w"]
    layers = paths(tree).index("model.layers") + 1
    assert [tree.path(child) for child in tree.children(layers)] == ["model.layers.2", "model.layers.10"]
    assert [names[i] for i in tree.order[tree.lo[layers]:tree.hi[layers]]] == order[2:]  # a group is one run
    assert tree.tensors(0) == 5 and tree.ancestors(tree.node_of[0])[-1] == 0


def test_a_tensor_that_is_also_a_group():
    names = ["enc.weight", "enc"]
    tree = hierarchy.build(catalog_of(names))
    enc = paths(tree).index("enc") + 1
    assert tree.pair[enc] == 1 and tree.is_group(enc) and tree.tensors(enc) == 2
    assert [names[i] for i in tree.order] == ["enc", "enc.weight"]


def test_parts_equal_as_numbers_stay_apart_and_each_is_one_group():
    """`01` and `1` sort as the same number, yet are different parts: one group each, never
    a group split in two by the other's members."""
    names = ["layers.01.w", "layers.1.w", "layers.01.b", "layers.1.b"]
    tree = hierarchy.build(catalog_of(names))
    assert paths(tree) == ["layers", "layers.01", "layers.01.b", "layers.01.w", "layers.1", "layers.1.b", "layers.1.w"]


def test_a_name_deeper_than_the_tree_shows_keeps_the_rest_as_its_last_part():
    deep = ".".join(f"p{i}" for i in range(hierarchy.MAX_DEPTH + 10))
    tree = hierarchy.build(catalog_of([deep, "p0.x"]))
    leaf = tree.node_of[0]
    assert len(tree.ancestors(leaf)) == hierarchy.MAX_DEPTH + 1  # the root included
    assert tree.path(leaf) == deep and tree.parts[leaf] == ".".join(f"p{i}" for i in range(63, 74))


def test_a_large_random_tree_keeps_every_group_one_run_of_its_tensors():
    rng = random.Random(7)
    words = ["model", "layers", "mlp", "attn", "experts", "w1", "weight", "bias", "0", "1", "2", "10", "11"]
    names = sorted({".".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(3000)})
    rng.shuffle(names)
    tree = hierarchy.build(catalog_of(names))
    shown = [tree.path(node) for node in range(1, len(tree))]
    assert len(set(shown)) == len(shown)  # every path once
    for node in range(len(tree)):
        prefix = tree.path(node)
        members = {names[i] for i in tree.order[tree.lo[node]:tree.hi[node]]}
        assert members == {n for n in names if not prefix or n == prefix or n.startswith(prefix + ".")}
        subtree = {tree.path(k) for k in range(node + 1, tree.end[node])}
        assert all(path.startswith(prefix + "." if prefix else "") for path in subtree)
    assert sorted(names[i] for i in tree.order) == sorted(names)


def test_names_ranked_by_template_as_by_every_part():
    """The quick ranking (a template's digits as numbers) gives what ranking every part gives,
    on names that test it: leading zeros, digits inside a part, other digits than ASCII, empty
    parts, more digits in a part than 64 bits hold; and it steps aside for a newline in a
    name or too many templates."""
    rng = random.Random(11)
    words = ["model", "layers", "h#", "a#b#c", "#", "#", "", "x", "٣", "w٣#", "e#e", "experts"]
    numbers = [str(k) for k in range(300)] + ["00", "007", "010", "9" * 18]

    def filled(word: str) -> str:
        first, *rest = word.split("#")
        return first + "".join(rng.choice(numbers) + piece for piece in rest)

    cases = []
    for _ in range(20):
        shapes = [[rng.choice(words) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 5))]
        shapes = [shape for shape in shapes if "".join(shape).count("#") <= 2] or [["x"]]  # (few templates)
        cases.append(list(dict.fromkeys(".".join(map(filled, rng.choice(shapes))) for _ in range(2000))))
    quick = [names for names in cases if len(names) >= 200]  # (the others have too few names per template)
    assert len(quick) >= 12
    for names in quick:
        got, expected = hierarchy.ranks_by_template(names), hierarchy.ranks_by_part(names)
        assert got is not None
        assert got[2] == expected[2] and got[1].tolist() == expected[1].tolist()
        assert got[0].tolist() == expected[0].tolist()
    many = ["".join(rng.choices("abcdefgh", k=8)) + ".w" for _ in range(2000)]  # a template each
    for names in (["a\nb.1"] + [f"a.{k}" for k in range(100)], many):
        assert hierarchy.ranks_by_template(names) is None


def test_a_digit_that_is_not_decimal_reads_as_a_letter():
    """'²' is a digit to `str.isdigit` but no number to `int`: a name with one still sorts."""
    names = ["w.1²", "w.10", "w.2", "²"]
    tree = hierarchy.build(catalog_of(names))
    assert paths(tree) == ["w", "w.1²", "w.2", "w.10", "²"]


def test_a_filter_keeps_the_matching_names_only():
    names = [f"model.layers.{i}.{m}.weight" for i in range(3) for m in ("q_proj", "mlp.up_proj")]
    catalog = catalog_of(names)
    tree = hierarchy.build(catalog, "q_proj")
    assert [names[i] for i in tree.order] == [f"model.layers.{i}.q_proj.weight" for i in range(3)]
    assert (tree.position >= 0).sum() == 3 and tree.pattern == "q_proj"
    globbed = hierarchy.build(catalog, "*.[02].mlp.*")
    assert [names[i] for i in globbed.order] == ["model.layers.0.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"]


def rollup_with(names: list[str], tree: hierarchy.NameTree) -> hierarchy.Rollup:
    n = len(names)
    return hierarchy.Rollup(tree, np.full(n, hierarchy.CODE["pending"], np.int8), np.full(n, np.nan), np.full(n, 4))


def test_groups_count_rank_and_find_as_results_arrive_and_change():
    names = [f"model.layers.{layer}.{module}.weight" for layer in range(12)
             for module in ("q_proj", "k_proj", "mlp.up_proj", "mlp.down_proj")]
    tree = hierarchy.build(catalog_of(names))
    rollup = rollup_with(names, tree)
    badge, rel = np.full(len(names), hierarchy.CODE["pending"], np.int8), np.full(len(names), np.nan)
    rng = random.Random(0)
    groups = [0, paths(tree).index("model") + 1, paths(tree).index("model.layers.3") + 1]
    for step in range(300):
        index = np.array(rng.sample(range(len(names)), 3))
        value = np.array([rng.choice([0.0, 0.5, rng.random(), rng.random() / 100]) for _ in index])
        badge[index] = np.where(value > 0, hierarchy.CODE["changed"], hierarchy.CODE["identical"])
        rel[index] = value
        rollup.update(index, badge[index], rel[index])
        for group in groups:
            members = tree.order[tree.lo[group]:tree.hi[group]]
            assert rollup.counts(group).tolist() == np.bincount(badge[members], minlength=len(hierarchy.SEVERITY)).tolist()
            ranked = sorted(((rel[i], i) for i in members if rel[i] > 0), key=lambda item: -item[0])
            assert [r for _, r in rollup.most_changed(group)] == [r for r, _ in ranked[:hierarchy.TOP]], step
            known = rel[members][~np.isnan(rel[members])]
            assert rollup.max_rel(group) == (float(known.max()) if len(known) else None)
            assert rollup.parameters(group) == 4 * len(members)


def test_next_differing_goes_both_ways_and_wraps():
    names = [f"t{i}" for i in range(6)]
    tree = hierarchy.build(catalog_of(names))
    rollup = rollup_with(names, tree)
    assert rollup.next_differing(-1, 1) is None  # nothing read: nothing differs yet
    index = np.arange(6)
    badge = np.array([hierarchy.CODE["changed" if i in (1, 4) else "identical"] for i in index], np.int8)
    rollup.update(index, badge, np.where(badge == hierarchy.CODE["changed"], 0.1, 0.0))
    found = [names[tree.order[p]] for p in (rollup.next_differing(-1, 1), rollup.next_differing(1, 1),
                                             rollup.next_differing(4, 1), rollup.next_differing(4, -1),
                                             rollup.next_differing(1, -1))]
    assert found == ["t1", "t4", "t1", "t1", "t4"]
    assert rollup.status(0) == "changed" and rollup.differing(0) == 2


def test_badges_put_nan_and_dtype_changes_above_the_status(tmp_path, ck, diff):
    import torch

    a = {"w": torch.ones(4), "x": torch.ones(4), "y": torch.ones(4)}
    b = {"w": torch.tensor([1.0, float("nan"), 1.0, 1.0]), "x": torch.ones(4, dtype=torch.float64), "y": torch.ones(4)}
    d = diff(ck.write_safetensors(tmp_path / "a.safetensors", a), ck.write_safetensors(tmp_path / "b.safetensors", b))
    codes = hierarchy.badges(d.catalog, d.table)
    assert {d.catalog.names[i]: hierarchy.SEVERITY[code] for i, code in enumerate(codes)} == \
        {"w": "nonfinite", "x": "dtype", "y": "identical"}
