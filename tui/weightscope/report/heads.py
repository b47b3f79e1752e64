"""`diff --heads`: a change by attention head and by MoE expert, in the JSON document and as text."""

from __future__ import annotations

from weightscope.analysis.heads import Breakdown, Known, Unavailable, UnitFigures, expert_rollups, fused_rollups
from weightscope.report.diff import natural_order, percent

TOP_HEADS = 4  # heads named per tensor in the text summary
TOP_EXPERTS = 6  # experts named per MoE block


def head_counts_json(known: Known) -> dict:
    """The top-level `head_counts`: the counts used and where they come from, or why there are
    none; a multimodal model's towers (its vision encoder) with their own."""
    config = known.config
    return {"heads": config and config.heads, "kv_heads": config and config.kv_heads,
            "head_dim": config and config.head_dim, "source": config and config.source,
            "unknown": known.why or None, "notes": list(known.notes),
            "towers": [{"tower": t.name, "modules": list(t.modules), "heads": t.config and t.config.heads,
                        "kv_heads": t.config and t.config.kv_heads, "head_dim": t.config and t.config.head_dim,
                        "source": t.config and t.config.source, "unknown": t.why or None} for t in known.towers]}


def unit_json(figures: UnitFigures) -> dict:
    unit = figures.unit
    out = {"rel_l2": figures.rel_l2, "max_abs": figures.max_abs, "cosine": figures.cosine,
           "nonfinite": figures.nonfinite}
    if unit.part == "expert":
        return {"expert": unit.index, **out}
    entry = {"part": unit.part, "head": unit.index, "kv_head": unit.kv_head}
    if unit.readers:
        entry["readers"] = list(unit.readers)
    return entry | out


def tensor_fields(found, known: Known) -> tuple[dict, str | None]:
    """A tensor's `heads` and `experts` keys, and a note where it has neither though it might."""
    fields = {"heads": None, "experts": None}
    if isinstance(found, Breakdown):
        fields["heads" if found.kind == "heads" else "experts"] = [unit_json(u) for u in found.units]
        return fields, None
    if isinstance(found, Unavailable) and found.why != known.why:  # the document says that one once
        return fields, f"heads: {found.why}"
    return fields, None


def unit_label(figures: UnitFigures) -> str:
    unit = figures.unit
    if unit.part == "expert":
        return f"expert {unit.index}"
    if unit.readers:
        readers = unit.readers
        read_by = f"{readers[0]}–{readers[-1]}" if len(readers) > 1 else str(readers[0])
        return f"{unit.part} kv head {unit.index} (read by {read_by})"
    return f"{unit.part} head {unit.index}"


def most_changed(units: list[UnitFigures], top: int) -> str:
    """'q head 3 12%, q head 5 0.1%; 6 others ≤ 0.001%' (or 'unchanged')."""
    moved = sorted((u for u in units if u.delta_sq > 0), key=lambda u: -(u.rel_l2 or 0))
    if not moved:
        return "unchanged"
    named = ", ".join(f"{unit_label(u)} {percent(u.rel_l2)}" for u in moved[:top])
    rest = len(units) - min(top, len(moved))
    if rest:
        largest = max((u.rel_l2 or 0 for u in moved[top:]), default=0.0)
        named += f"; {rest} other{'s' if rest != 1 else ''} " + (f"≤ {percent(largest)}" if largest else "unchanged")
    return named


def text_lines(catalog, table, known: Known, found: dict):
    """The heads and experts section of `diff --heads`'s text: each changed attention tensor's
    most changed heads, and each MoE block's experts rolled up."""
    yield ""
    yield f"heads: {known.config.describe()}" if known.config else f"heads: {known.why}"
    yield from (f"   {tower.describe()}" for tower in known.towers if tower.config)  # the others: per tensor
    yield from (f"   note: {note}" for note in known.notes)
    position = {i: k for k, i in enumerate(natural_order(catalog).tolist())}
    for i in sorted(found, key=position.__getitem__):
        result = found[i]
        if isinstance(result, Breakdown) and result.kind == "heads" and any(u.delta_sq > 0 for u in result.units):
            yield f"  {catalog.names[i]}: {most_changed(list(result.units), TOP_HEADS)}"
        elif isinstance(result, Unavailable) and result.why != known.why:
            yield f"  {catalog.names[i]}: {result.why}"
    blocks = {**expert_rollups(catalog, table), **fused_rollups(catalog, found)}
    if blocks:
        yield ""
        yield "experts (rel L2 of each expert's tensors together):"
    for block, experts in sorted(blocks.items()):
        moved = sorted((e for e in experts if e.delta_sq > 0), key=lambda e: -(e.rel_l2 or 0))
        named = ", ".join(f"{e.expert} {percent(e.rel_l2)}" for e in moved[:TOP_EXPERTS])
        more = " …" if len(moved) > TOP_EXPERTS else ""
        yield (f"  {block}: {len(moved)} of {len(experts)} experts changed" + (f": {named}{more}" if moved else ""))
