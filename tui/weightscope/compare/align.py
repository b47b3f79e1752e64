"""Pairing the tensor names of A and B.

Exact names pair first. What is left pairs once the wrappers that training adds are
stripped (DDP's `module.`, torch.compile's `_orig_mod.`, FSDP's and activation
checkpointing's wrapper modules), and then across a missing or extra `model.` prefix.
Only one-to-one matches pair; every mapping applied is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import NamedTuple

from weightscope.sources.checkpoint import Checkpoint, TensorInfo

LEADING_WRAPPERS = ("module",)
ANYWHERE_WRAPPERS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


class Pair(NamedTuple):
    """A tensor of A and its counterpart in B; one side is None when it has no counterpart.

    A named tuple: a 100,000-tensor pair makes 100,000 of them as it opens.

    Attributes:
        name: the name shown for the pair (A's name where A has one).
        notes: what the user should know about this pair (ties, ...).
    """

    name: str
    a: TensorInfo | None
    b: TensorInfo | None
    notes: tuple[str, ...] = ()

    @property
    def tied_elsewhere(self) -> bool:
        """One side only, but tied to a tensor that both sides have: not a real absence."""
        return any(note.startswith("tied to ") for note in self.notes)


make_pair = partial(tuple.__new__, Pair)  # a Pair from its fields, with no Python call


class SameNames(Sequence[Pair]):
    """The pairs of two checkpoints with the same names, in A's order: pair i is A's i-th name
    on both sides, made when asked (the catalog reads the sides' columns instead)."""

    def __init__(self, a: Mapping[str, TensorInfo], b: Mapping[str, TensorInfo]):
        self.a, self.b = a, b
        self.names = list(a)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        name = self.names[i]
        return Pair(name, self.a[name], self.b[name])

    def __iter__(self) -> Iterator[Pair]:
        a = self.a.values()
        b = self.b.values() if list(self.b) == self.names else map(self.b.__getitem__, self.names)
        return map(make_pair, zip(self.names, a, b, repeat(())))


@dataclass(frozen=True)
class Alignment:
    pairs: Sequence[Pair]
    notes: list[str]


def unwrap(name: str) -> tuple[str, tuple[str, ...]]:
    """The name without training wrappers, and the wrappers removed."""
    parts = name.split(".")
    removed = []
    while len(parts) > 1 and parts[0] in LEADING_WRAPPERS:
        removed.append(parts.pop(0))
    kept = []
    for part in parts:
        (removed if part in ANYWHERE_WRAPPERS and len(parts) > 1 else kept).append(part)
    return ".".join(kept), tuple(dict.fromkeys(removed))


def match_unique(left: dict[str, str], right: dict[str, str]) -> list[tuple[str, str]]:
    """Pairs (left name, right name) whose keys are equal and unique on both sides."""
    left_count, right_count = Counter(left.values()), Counter(right.values())
    by_key = {key: name for name, key in right.items() if right_count[key] == 1}
    return [(name, by_key[key]) for name, key in left.items()
            if left_count[key] == 1 and key in by_key]


def align(a: Checkpoint, b: Checkpoint) -> Alignment:
    """Every tensor of A and B as a pair, A's order first, then B's tensors that A lacks.

    The usual case, the same names on both sides, pairs with `map` alone: 100,000-tensor
    models are the normal case."""
    if list(a.tensors) == list(b.tensors) or a.tensors.keys() == b.tensors.keys():  # (no one-sided pair: no ties to note)
        return Alignment(SameNames(a.tensors, b.tensors), [])
    common = a.tensors.keys() & b.tensors.keys()
    matched: dict[str, str] = dict(zip(common, common))
    taken_b = set(common)  # matched.values(), as a set: a lookup per name must not scan them all
    mappings: Counter = Counter()

    def rest_a() -> list[str]:
        return [n for n in a.tensors if n not in matched]

    def rest_b() -> list[str]:
        return [n for n in b.tensors if n not in taken_b]

    def pair_up(name_a: str, name_b: str) -> None:
        matched[name_a] = name_b
        taken_b.add(name_b)
        for side, name in (("A", name_a), ("B", name_b)):
            for wrapper in unwrap(name)[1]:
                mappings[f"{side}: removed wrapper '{wrapper}.'"] += 1

    for name_a, name_b in match_unique({n: unwrap(n)[0] for n in rest_a()},
                                       {n: unwrap(n)[0] for n in rest_b()}):
        pair_up(name_a, name_b)

    bare_a = {n: unwrap(n)[0] for n in rest_a()}
    bare_b = {n: unwrap(n)[0] for n in rest_b()}
    for side, mine, theirs in (("A", bare_a, bare_b), ("B", bare_b, bare_a)):
        for name_mine, name_theirs in match_unique(mine, {n: "model." + k for n, k in theirs.items()}):
            pair = (name_mine, name_theirs) if side == "A" else (name_theirs, name_mine)
            if pair[0] not in matched and pair[1] not in taken_b:
                pair_up(*pair)
                other = "B" if side == "A" else "A"
                mappings[f"'model.' prefix in {side}, not in {other}"] += 1

    names = list(a.tensors)
    pairs = list(map(make_pair, zip(names, a.tensors.values(), map(b.tensors.get, map(matched.get, names)), repeat(()))))
    pairs += [Pair(n, None, b.tensors[n]) for n in b.tensors if n not in taken_b]
    pairs = note_ties(pairs)
    notes = [f"names mapped: {what} ({count} tensors)" for what, count in mappings.items()]
    return Alignment(pairs, notes)


def note_ties(pairs: list[Pair]) -> list[Pair]:
    """A name on one side only that shares storage with a paired tensor gets a note saying so.

    safetensors stores tied weights once (`lm_head.weight` is dropped when tied to the
    embeddings) while .bin keeps every name.
    """
    groups: dict[tuple[str, str], list[str]] = {}  # (side, first name) -> every name of a tie
    for side, infos in (("A", [p.a for p in pairs]), ("B", [p.b for p in pairs])):
        for info in [info for info in infos if info is not None and info.tied_to is not None]:
            groups.setdefault((side, info.tied_to), [info.tied_to]).append(info.name)
    if not groups:
        return pairs
    both = {(side, info.name) for p in pairs if p.a is not None and p.b is not None
            for side, info in (("A", p.a), ("B", p.b))}
    out = []
    for p in pairs:
        side, info = ("A", p.a) if p.b is None else ("B", p.b) if p.a is None else (None, None)
        group = groups.get((side, info.tied_to or info.name), ()) if info is not None else ()
        partner = next((n for n in group if n != info.name and (side, n) in both), None)
        if partner is not None:
            other = "B" if side == "A" else "A"
            p = Pair(p.name, p.a, p.b, p.notes + (f"tied to {partner} in {side}; {other} stores that tensor once",))
        out.append(p)
    return out
