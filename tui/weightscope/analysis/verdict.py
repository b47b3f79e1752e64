"""The verdict: what kind of change a comparison is, and what may be wrong with it.

A verdict names one kind (`KINDS`), with a confidence and the facts that decided it, and
raises flags (`FLAGS`), each with a severity, the tensors it concerns and a sentence. It is
decided from what the scan already has (every pair's status and figures, the catalog's
dtypes, shapes and ties, the LoRA alarms, the audit of resized tensors) and from the spectra
of a bounded sample of changed matrices (`sample`): a few matrices, one per module type,
the smallest of each, so the verdict costs a small part of the scan. The README lists the
kinds and flag codes and how each is decided; later work adds codes, never renames them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from weightscope.analysis.anatomy import OUTSIDE, anomalies, place, stack_of
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import DTYPE, Catalog
from weightscope.compare.results import ResultTable
from weightscope.report.diff import nonfinite_text, resized_gist
from weightscope.sources.dtypes import FLOATING, ITEMSIZE

KINDS = ("identical", "cast", "quantized", "low_rank", "partial", "full", "unrelated")
SEVERITIES = ("info", "warn", "error")  # in order: `--fail-on warn` fails on warn and error
FLAGS = {  # code -> its usual severity (vocab_resized is raised to warn when its audit finds trouble)
    "nonfinite": "error", "nothing_changed": "warn", "lora_zero": "warn", "lora_negligible": "warn",
    "lora_unapplied": "warn", "tie_broken": "warn", "vocab_resized": "info", "dtype_upcast": "warn",
    "outlier": "warn", "frozen_suspect": "warn",
}

SAMPLE = 4  # matrices whose spectra the verdict reads ...
SAMPLE_ROWS = 256  # ... of this many leading rows each (a rank up to 128 shows in them)
LOW_RANK_SHARE = 0.9  # the top r directions hold this share of ‖Δ‖²_F ...
LOW_RANK_GAP = 3.0  # ... and σ_r / σ_(r+1) is at least this: a cutoff, not a gentle decay
NUMERICAL_ZERO = 1e-6  # singular values below this share of σ₁ are float32 rounding: zero
UNRELATED_COSINE = 0.3  # changed matrices whose cosine (by elements, median) is below this are not related
MOST = 0.5  # "most weights changed": this share of the parameters of same-shape pairs
GROWTH = 10.0  # absmax or std grown this many times: an outlier
NAMED = 5  # tensors named in a flag's sentence

EQUAL = (results.IDENTICAL, results.VALUE_EQUAL)
SAME_SHAPE = (results.IDENTICAL, results.VALUE_EQUAL, results.CLOSE, results.CHANGED)
# Lowest SNR (dB) of a quantized copy of its source, by the type's name prefix (first match).
# Measured on normal weights: Q8_0 about 45 dB, Q6_K 35, Q5 30, Q4 21, Q3 15, Q2 9.
SNR_BANDS = (("Q8", 35.0), ("Q6", 27.0), ("Q5", 23.0), ("Q4", 16.0), ("IQ4", 16.0), ("Q3", 10.0), ("IQ3", 10.0),
             ("F8", 20.0), ("FP8", 20.0), ("", 5.0))
FAMILIES = {"q": "attention", "k": "attention", "v": "attention", "qkv": "attention", "o": "attention",
            "gate": "MLP", "up": "MLP", "down": "MLP", "router": "experts", "experts.gate": "experts",
            "experts.up": "experts", "experts.down": "experts", "norm 1": "norms", "norm 2": "norms"}
FAMILY_ORDER = ("attention", "MLP", "experts", "norms")
EMBEDDING = re.compile(r"(embed_tokens|wte|word_embeddings|tok_embeddings|token_embd|embed_in|shared)\b")
HEAD = re.compile(r"(^|\.)(lm_head|embed_out|output)\b")
MEAN_INIT = "mean of old rows"  # `compare.overlap`'s guess for rows set to the old rows' mean
UPCAST_SHARE = 0.1  # upcast tensors hold this share of A's bytes at least (GGUF keeps its norms in F32)


@dataclass(frozen=True)
class Flag:
    code: str
    severity: str
    tensors: list[str]
    message: str


@dataclass(frozen=True)
class Verdict:
    """What kind of change this is (`KINDS`), how sure, why, and what may be wrong.

    Attributes:
        rank: low_rank: the estimated rank of the change.
        frozen: the module groups left bit-identical while others changed.
    """

    kind: str
    confidence: str
    summary: str
    facts: list[str]
    rank: int | None = None
    frozen: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)

    def json(self) -> dict:
        return {"kind": self.kind, "confidence": self.confidence, "summary": self.summary, "facts": self.facts,
                "rank": self.rank, "frozen": self.frozen,
                "flags": [{"code": f.code, "severity": f.severity, "tensors": f.tensors, "message": f.message}
                          for f in self.flags]}

    def failing(self, severity: str) -> list[Flag]:
        """The flags of `severity` or worse."""
        floor = SEVERITIES.index(severity)
        return [f for f in self.flags if SEVERITIES.index(f.severity) >= floor]


# The sample of matrices whose spectra are read


def changed_matrices(catalog: Catalog, table: ResultTable) -> np.ndarray:
    """Changed pairs of model weights that are matrices, the same shape on both sides (a fused
    expert tensor [experts, in, out] is many matrices: its first rows say nothing of one's rank)."""
    changed = (table.status == results.CHANGED) & ~catalog.factor
    return np.array([i for i in np.flatnonzero(changed).tolist() if len(catalog.a.shape[i] or ()) == 2], np.int64)


def sample(catalog: Catalog, table: ResultTable) -> list[int]:
    """Up to `SAMPLE` changed matrices, one per module type (the most common types first), the
    smallest of each type: enough to tell a low-rank change from a full one, at a small cost."""
    by_type: dict[str, list[int]] = {}
    for i in changed_matrices(catalog, table).tolist():
        by_type.setdefault(place(catalog.names[i]).module, []).append(i)
    numel = catalog.numel
    return [min(members, key=lambda j: (numel[j], j))
            for members in sorted(by_type.values(), key=len, reverse=True)[:SAMPLE]]


def rank_of(spectrum) -> int | None:
    """The rank of a change when it is clearly low: among the cuts r up to half the smaller
    dimension whose top r directions hold `LOW_RANK_SHARE` of ‖Δ‖², the one where σ_r/σ_(r+1)
    is largest, if that gap is at least `LOW_RANK_GAP`. Values below `NUMERICAL_ZERO` of σ₁
    are zero: the first of them ends the search (past it, ratios of rounding noise mean
    nothing). None for a high-rank change."""
    sigma = spectrum.singular_values
    if spectrum.frobenius == 0 or not spectrum.cumulative_share:
        return None
    zero = sigma[0] * NUMERICAL_ZERO
    if spectrum.method == "factors":  # exact: the factors' rank
        return sum(1 for s in sigma if s > zero) or None
    best, gap = None, LOW_RANK_GAP
    for r in range(1, min(len(sigma), min(spectrum.shape) // 2 + 1)):
        ratio = sigma[r - 1] / sigma[r] if sigma[r] > zero else math.inf
        if spectrum.share(r) >= LOW_RANK_SHARE and ratio >= gap:
            best, gap = r, ratio
        if sigma[r] <= zero:
            break
    return best


# Facts


@dataclass
class Parts:
    """Where each pair sits, as codes: its group (the embeddings, a layer, the head, ...; into
    `part_names`), its family (attention, MLP, norms, ...; "" outside the layers), its module
    type, its layer (-1 outside), and whether it is a matrix."""

    part: np.ndarray
    part_names: list[str]
    family: np.ndarray
    family_names: list[str]
    module: np.ndarray
    module_names: list[str]
    layer: np.ndarray
    matrix: np.ndarray


def codes_of(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each label's code, and the labels in order of first appearance."""
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(label, len(index)) for label in labels), np.int64, len(labels)), list(index)


def parts_of(catalog: Catalog, places: list) -> Parts:
    names = catalog.names
    part = codes_of([role(name) or where.module if where.row == OUTSIDE else f"layer {where.row}"
                     for name, where in zip(names, places)])
    family = codes_of(["" if where.row == OUTSIDE else FAMILIES.get(where.module, where.module) for where in places])
    module = codes_of([where.module for where in places])
    layer = np.fromiter((-1 if where.layer is None else where.layer for where in places), np.int64, len(places))
    matrix = np.fromiter((len(shape or ()) >= 2 for shape in catalog.a.shape), bool, len(names))
    return Parts(*part, *family, *module, layer, matrix)


def any_per(codes: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """Per code, whether any pair of it is in `mask`."""
    return np.bincount(codes[mask], minlength=size) > 0


def role(name: str) -> str | None:
    """"embeddings" or "output head" for the token embeddings and the output head (outside the layers)."""
    if any(p.isdecimal() for p in name.split(".")):
        return None
    if EMBEDDING.search(name):
        return "embeddings"
    if HEAD.search(name):
        return "output head"
    return "final norm" if re.search(r"(^|\.)(norm|ln_f|final_layer_norm|final_layernorm)\b", name) else None


def layer_ranges(rows: list[str]) -> str:
    """'layers 0–11, 14' from layer rows ('12', or 'vision.encoder.layers.3' in a model of several stacks)."""
    numbers = sorted(int(r) for r in rows if r.isdecimal())
    others = sorted(r for r in rows if not r.isdecimal())
    runs: list[str] = []
    start = prev = None
    for n in numbers + [None]:
        if start is not None and (n is None or n != prev + 1):
            runs.append(str(start) if start == prev else f"{start}–{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    words = []
    if runs:
        words.append(("layer " if len(numbers) == 1 else "layers ") + ", ".join(runs))
    return ", ".join(words + others)


def describe_groups(outside: list[str], rows: list[str]) -> str:
    return ", ".join(([*dict.fromkeys(outside)]) + ([layer_ranges(rows)] if rows else []))


def listed(names: list[str]) -> str:
    shown = ", ".join(names[:NAMED])
    return shown + (f" and {len(names) - NAMED:,} more" if len(names) > NAMED else "")


def numel_weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def quant_floor(kind: str) -> float:
    upper = kind.upper()
    return next(floor for prefix, floor in SNR_BANDS if upper.startswith(prefix))


def bytes_of(dtype: str | None) -> int:
    return ITEMSIZE.get(dtype or "", 0)


# Deciding


def decide(catalog: Catalog, table: ResultTable, spectra: dict[int, object] | None = None,
           side_notes: tuple[list[str], list[str] | None] = ([], None)) -> Verdict:
    """The verdict of a whole scan (with its resized pairs' second pass, `table.resized`).

    Args:
        spectra: `spectrum.Spectrum` (or None) of the pairs `sample` chose.
        side_notes: each side's notes after the scan (the LoRA alarms are among them).
    """
    stacks = {s for s in map(stack_of, catalog.names) if s}  # a vision tower's layer 3 is not the text's
    places = [place(name, stacks) for name in catalog.names]  # once: what follows reads them as codes
    parts = parts_of(catalog, places)
    kind, confidence, summary, facts, rank, frozen = kind_of(catalog, table, spectra or {}, parts)
    flags = (nonfinite_flags(catalog, table) + nothing_changed_flags(catalog, kind, confidence) +
             lora_flags(catalog, table, side_notes) + tie_flags(catalog, table, parts) +
             resized_flags(catalog, table) + upcast_flags(catalog, table) +
             outlier_flags(catalog, table, places) + frozen_suspect_flags(catalog, table, parts))
    flags.sort(key=lambda f: -SEVERITIES.index(f.severity))
    return Verdict(kind, confidence, summary, facts, rank, frozen, flags)


def kind_of(catalog: Catalog, table: ResultTable, spectra: dict[int, object], parts: Parts):
    """(kind, confidence, summary, facts, rank, frozen)."""
    status = table.status
    weights = ~catalog.factor & (status != results.UNREAD)
    numel = catalog.numel.astype(np.float64)
    tied = np.zeros(len(catalog), bool)  # on one side only, but tied to a tensor both have: no real absence
    tied[[i for i in catalog.pair_notes if catalog.tied_elsewhere(i)]] = True
    same = weights & np.isin(status, SAME_SHAPE)
    apart = weights & (np.isin(status, (results.ONLY_A, results.ONLY_B, results.SHAPE_MISMATCH)) & ~tied)
    resized = np.zeros(len(catalog), bool)  # resized in one dimension and compared where they overlap
    resized[[i for i, found in table.resized.items() if found.error is None]] = True
    apart &= ~resized
    unreadable = weights & (status == results.ERROR)
    equal = same & np.isin(status, EQUAL)
    changed = same & (status == results.CHANGED)
    close = same & (status == results.CLOSE)
    n_weights = int(weights.sum())
    if n_weights == int(unreadable.sum()):
        why = f"{n_weights:,} unreadable" if n_weights else "no model weights"
        return "identical", "low", f"nothing could be compared: {why}", [f"{why}, none compared"], None, []
    facts = [f"{int(equal.sum()):,} of {n_weights:,} tensors bit-identical or equal in value"]
    if unreadable.any():
        facts.append(f"{int(unreadable.sum()):,} unreadable, not compared: the verdict is of the rest")
    if close.any():
        facts.append(f"{int(close.sum()):,} within the rounding of their dtype")
    if changed.any():
        share = numel[changed].sum() / max(numel[same].sum(), 1)
        facts.append(f"{int(changed.sum()):,} changed ({share:.0%} of the parameters of same-shape tensors)")
    if apart.any():
        facts.append(f"{int(apart.sum()):,} without a counterpart of the same shape")
    if resized.any():
        facts.append(f"{int(resized.sum()):,} resized in one dimension, compared where they overlap")

    # Not a pair of related checkpoints: most tensors have no counterpart of their shape.
    if numel[apart].sum() > numel[same].sum():
        share = numel[apart].sum() / max(numel[apart | same].sum(), 1)
        return ("unrelated", "high", f"not the same model: {share:.0%} of the parameters have no counterpart of "
                "their shape", facts, None, [])

    quant_a, quant_b = catalog.a.quant, catalog.b.quant
    quantized = [i for i in np.flatnonzero(same).tolist() if (i in quant_a) != (i in quant_b)]
    if quantized and numel[quantized].sum() >= numel[same].sum() / 2:
        return quantized_kind(catalog, table, quantized, facts)

    # stored types only: a LoRA adapter's W + ΔW is float32 because it is computed so
    dtype_changed = np.flatnonzero(same & (catalog.known == DTYPE)).tolist()
    trust = "low" if unreadable.any() else "high"
    if not changed.any() and not close.any() and not apart.any() and not resized.any() and not dtype_changed:
        return "identical", trust, "every tensor compared is equal on both sides", facts, None, []
    if not changed.any() and not apart.any() and not resized.any():  # only dtypes, or rounding, differ
        if dtype_changed:
            pairs = sorted({f"{catalog.a.stored_dtype(i)} → {catalog.b.stored_dtype(i)}" for i in dtype_changed})
            facts.append(f"dtype changed in {len(dtype_changed):,} tensors ({', '.join(pairs)})")
            return ("cast", trust, f"a cast ({', '.join(pairs)}): every value equal or within the rounding of "
                    "the narrower dtype", facts, None, [])
        return ("identical", "low" if unreadable.any() else "medium", "every tensor equal within the rounding of "
                "its dtype", facts, None, [])

    cosine = table.values[:, c.FD + c.COSINE]
    matrices = changed_matrices(catalog, table)
    defined = matrices[~np.isnan(cosine[matrices])] if len(matrices) else matrices
    if len(defined):
        median = numel_weighted_median(cosine[defined], numel[defined])
        facts.append(f"cosine of A and B over the changed matrices: median {median:.3g} (by parameters)")
        if median < UNRELATED_COSINE:
            confidence = "high" if median < UNRELATED_COSINE / 3 else "medium"
            return ("unrelated", confidence, f"not a fine-tune of one another: the changed matrices are "
                    f"uncorrelated (median cosine {median:.2g})", facts, None, [])

    frozen_groups, changed_text = groups(parts, same, equal, changed | close | resized)
    ranks = {i: rank_of(spectra[i]) for i in sorted(spectra) if spectra[i] is not None}
    rank = None
    if ranks:
        low = [r for r in ranks.values() if r is not None]
        by_rank: dict[str, list[str]] = {}
        for i, r in ranks.items():
            by_rank.setdefault(f"rank {r}" if r else "high rank", []).append(catalog.names[i])
        facts.append(f"spectra of the first {SAMPLE_ROWS} rows of {len(ranks)} sampled changed matrices: " +
                     "; ".join(f"{what} ({listed(names)})" for what, names in by_rank.items()))
        if len(low) * 3 >= len(ranks) * 2:  # two thirds or more agree the change is low-rank
            rank = int(np.median(low))
            agree = all(r == rank for r in ranks.values())
            confidence = "high" if agree else "medium"
            summary = f"a low-rank change (rank {rank}"
            summary += ")" if agree else f", sampled ranks {', '.join(str(r or 'high') for r in ranks.values())})"
            summary += ": a merged LoRA or another low-rank update"
            if changed_text:
                summary += f"; {changed_text} changed"
            return "low_rank", confidence, summary, facts, rank, frozen_groups
        if low:
            facts.append("the sampled spectra disagree: some low-rank, some not")
    share = numel[changed].sum() / max(numel[same].sum(), 1)
    mixed = bool(ranks) and any(r is not None for r in ranks.values())
    if frozen_groups:
        summary = f"a partial fine-tune: {', '.join(frozen_groups)} frozen (bit-identical)"
        if changed_text:
            summary += f"; {changed_text} changed"
        return "partial", "medium" if mixed else "high", summary, facts, None, frozen_groups
    if share >= MOST:
        confidence = "low" if mixed else "high" if ranks and share >= 0.9 else "medium"
        return ("full", confidence, f"a full fine-tune: {share:.0%} of the parameters changed, high-rank"
                if ranks else f"a full fine-tune: {share:.0%} of the parameters changed", facts, None, [])
    return ("partial", "low", f"a partial change: {share:.0%} of the parameters changed"
            + (f" ({changed_text})" if changed_text else ""), facts, None, [])


def quantized_kind(catalog: Catalog, table: ResultTable, quantized: list[int], facts: list[str]):
    by_type: dict[str, list[int]] = {}
    for i in quantized:
        by_type.setdefault(catalog.b.quant.get(i) or catalog.a.quant.get(i), []).append(i)
    snr = table.values[:, c.FD + c.SNR_DB]
    below = []
    for kind, members in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
        values = snr[members]
        values = values[~np.isnan(values)]
        if not len(values):
            continue
        median, floor = float(np.median(values)), quant_floor(kind)
        facts.append(f"{len(members):,} tensors {kind}: SNR median {median:.1f} dB (a copy reads ≥ {floor:g} dB)")
        if median < floor:
            below.append(kind)
    types = ", ".join(by_type)
    if below:
        return ("quantized", "low", f"quantized ({types}), but the SNR of {', '.join(below)} is below its band: "
                "more than quantization differs", facts, None, [])
    return "quantized", "high", f"a quantized copy ({types}): the error is in the band of its type", facts, None, []


def groups(parts: Parts, same: np.ndarray, equal: np.ndarray, moved: np.ndarray) -> tuple[list[str], str]:
    """(the groups left bit-identical while others moved, what moved in words).

    A group is the embeddings, a layer, the head or another part outside the layers; frozen
    when every tensor of it compared is equal (a tensor on one side only does not count) and
    it holds a matrix (a norm's vector that stayed put says little about freezing).
    Where no whole group is frozen but a family (attention, MLP) is equal in every layer,
    that family is named.
    """
    weights = same | moved
    size = len(parts.part_names)
    present = any_per(parts.part, weights, size)
    unequal = any_per(parts.part, weights & ~equal, size)
    if not moved.any() or not unequal.any():
        return [], ""

    def split(found: np.ndarray) -> tuple[list[str], list[str]]:
        keys = [parts.part_names[k] for k in np.flatnonzero(found).tolist()]
        return [k for k in keys if not k.startswith("layer ")], [k.removeprefix("layer ") for k in keys
                                                                 if k.startswith("layer ")]

    frozen_outside, frozen_rows = split(present & ~unequal & any_per(parts.part, weights & parts.matrix, size))
    moved_outside, moved_rows = split(unequal)
    frozen = frozen_outside + ([layer_ranges(frozen_rows)] if frozen_rows else [])
    if not frozen:  # no whole group: families equal in every layer
        matrices = weights & parts.matrix
        families = len(parts.family_names)
        family_present = any_per(parts.family, matrices, families)
        family_still = family_present & ~any_per(parts.family, matrices & ~equal, families)
        named = {parts.family_names[k] for k in np.flatnonzero(family_present).tolist()} & set(FAMILY_ORDER)
        unmoved = [f for f in FAMILY_ORDER if f in named and family_still[parts.family_names.index(f)]]
        if unmoved and len(unmoved) < len(named):
            frozen = [f"{joined(unmoved)} of every layer"]
    moved_families = {parts.family_names[k] for k in np.unique(parts.family[moved & ~equal]).tolist()}
    words = []
    if moved_rows:
        families_moved = [f for f in FAMILY_ORDER if f in moved_families]
        words.append(f"{joined(families_moved) if families_moved else 'tensors'} of {layer_ranges(moved_rows)}")
    words += [f"the {k}" if k in ("embeddings", "output head", "final norm") else k for k in moved_outside]
    return frozen, joined(words)


def joined(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


# Flags


def nonfinite_counts(table: ResultTable, base: int) -> np.ndarray:
    return np.nan_to_num(table.values[:, [base + c.FNAN, base + c.FPOSINF, base + c.FNEGINF]]).astype(np.int64)


def nonfinite_flags(catalog: Catalog, table: ResultTable) -> list[Flag]:
    """NaN/Inf in B that A did not have."""
    in_a, in_b = nonfinite_counts(table, c.FA).sum(axis=1), nonfinite_counts(table, c.FB)
    new = np.flatnonzero((in_b.sum(axis=1) > 0) & (in_a == 0)).tolist()
    if not new:
        return []
    names = [catalog.names[i] for i in new]
    first = new[0]
    counts = nonfinite_text(*in_b[first].tolist())
    total = int(in_b[new].sum())
    return [Flag("nonfinite", "error", names,
                 f"NaN/Inf in B that A did not have: {len(new):,} tensor{'s' if len(new) > 1 else ''}, "
                 f"{total:,} values; first {names[0]} ({counts})")]


def nothing_changed_flags(catalog: Catalog, kind: str, confidence: str) -> list[Flag]:
    if kind != "identical" or confidence == "low" or catalog.single:  # low: little or nothing was compared
        return []
    return [Flag("nothing_changed", "warn", [],
                 "B equals A: if B was meant to be trained or merged, none of it reached the weights")]


def lora_flags(catalog: Catalog, table: ResultTable, side_notes) -> list[Flag]:
    """The LoRA alarms (an adapter whose factors are zero, whose ΔW rounds away, or that is not
    applied), surfaced as flags with the modules they concern."""
    flags = []
    zero = [catalog.names[i] for i, notes in table.notes.items() if any("all zero, so ΔW = 0" in n for n in notes)]
    negligible = [catalog.names[i] for i, notes in table.notes.items() if any("ALARM ΔW negligible" in n for n in notes)]
    unapplied = sorted({catalog.names[i] for source in (catalog.pair_notes, table.notes) for i, notes in source.items()
                        if any("ALARM ΔW not applied" in n for n in notes)})
    alarms = [n for notes in side_notes if notes for n in notes if n.startswith("ALARM")]
    zero_text = next((a for a in alarms if "all zero" in a), None)
    if zero or zero_text:
        flags.append(Flag("lora_zero", "warn", zero, (zero_text or f"lora_B or lora_A all zero in {listed(zero)}")
                          .removeprefix("ALARM: ")))
    negligible_text = next((a for a in alarms if "negligible" in a), None)
    if negligible_text or negligible:
        flags.append(Flag("lora_negligible", "warn", negligible,
                          (negligible_text or f"ΔW negligible next to W in {listed(negligible)}").removeprefix("ALARM: ")))
    other = [a for a in alarms if a not in (zero_text, negligible_text)]
    if other or unapplied:
        flags.append(Flag("lora_unapplied", "warn", unapplied,
                          "; ".join(a.removeprefix("ALARM: ") for a in other) or
                          f"ΔW not applied to {listed(unapplied)}"))
    return flags


def tie_flags(catalog: Catalog, table: ResultTable, parts: Parts) -> list[Flag]:
    """Embeddings and output head tied on one side (shared storage, or equal values) and not on the other."""
    roles = {role(catalog.names[i]): i for i in np.flatnonzero(parts.layer < 0).tolist()
             if catalog.names[i].endswith("weight") and role(catalog.names[i])}
    embedding, head = roles.get("embeddings"), roles.get("output head")
    if embedding is None or head is None:
        return []
    ties = []
    for label, side, base in (("A", catalog.a, c.FA), ("B", catalog.b, c.FB)):
        e, h = side.name[embedding], side.name[head]
        if e is None:
            ties.append(None)  # no embeddings: nothing to say
            continue
        if h is None:  # a tied model saved as safetensors drops the head: it is the embeddings
            ties.append("no head stored")
            continue
        shared = side.tied_to.get(head) == e or side.tied_to.get(embedding) == h
        figures = table.values[[embedding, head], base:base + c.FB - c.FA]
        equal = side.shape[embedding] == side.shape[head] and not np.isnan(figures).all() and \
            bool(np.array_equal(figures[0], figures[1], equal_nan=True))
        ties.append("shared storage" if shared else "equal values" if equal else "")
    if None in ties or bool(ties[0]) == bool(ties[1]):
        return []
    names = [catalog.names[embedding], catalog.names[head]]
    if ties[0]:
        message = (f"{names[1]} is tied to {names[0]} in A ({ties[0]}) but differs from it in B: "
                   "the tie was broken")
    else:
        message = f"{names[1]} and {names[0]} are tied in B ({ties[1]}) but not in A"
    return [Flag("tie_broken", "warn", names, message)]


def resized_flags(catalog: Catalog, table: ResultTable) -> list[Flag]:
    """Resized embeddings and output heads (a grown vocabulary), with what their common part
    did and the audit of their new rows: a warning when a new row holds NaN/Inf, is all zero
    or has a norm far from the old rows' (other than the old rows' mean, which is short by
    design), or the common part could not be read."""
    flags = []
    for i in np.flatnonzero(table.status == results.SHAPE_MISMATCH).tolist():
        name = catalog.names[i]
        if role(name) not in ("embeddings", "output head"):
            continue
        message = f"{name} resized {list(catalog.a.shape[i])} → {list(catalog.b.shape[i])}"
        found = table.resized.get(i)
        trouble = False
        if found is not None:
            message += f": {resized_gist(found)}"
            added = found.added
            trouble = found.error is not None or (added is not None and (  # the mean of old rows is short by design
                added.nonfinite_rows > 0 or added.zero_rows > 0 or (added.far_rows > 0 and added.init != MEAN_INIT)))
        flags.append(Flag("vocab_resized", "warn" if trouble else "info", [name], message))
    return flags


def upcast_flags(catalog: Catalog, table: ResultTable) -> list[Flag]:
    """B stores wider floats than A."""
    wider: dict[tuple[str, str], list[int]] = {}
    for i in np.flatnonzero(np.isin(table.status, SAME_SHAPE) & (catalog.known == DTYPE)).tolist():
        da, db = catalog.a.stored_dtype(i), catalog.b.stored_dtype(i)
        if da != db and (i in catalog.a.quant or da in FLOATING) and db in FLOATING and \
                (i in catalog.a.quant or bytes_of(db) > bytes_of(da)):
            wider.setdefault((da, db), []).append(i)
    if not wider:
        return []
    members = [i for group in wider.values() for i in group]
    before = int(catalog.a.nbytes[members].sum())
    after = int(catalog.b.nbytes[members].sum())
    if before < UPCAST_SHARE * catalog.a.nbytes[catalog.a.present].sum():
        return []
    kinds = ", ".join(f"{da} → {db} ({len(g):,})" for (da, db), g in wider.items())
    return [Flag("dtype_upcast", "warn", [catalog.names[i] for i in members],
                 f"B stores wider floats than A: {kinds}; {before / 1e9:.3g} GB → {after / 1e9:.3g} GB")]



def outlier_flags(catalog: Catalog, table: ResultTable, places: list) -> list[Flag]:
    """Changes far larger than their module type's across layers (the overview's anomaly rule;
    one flag per module type, its tensors most outlying first), and tensors whose absmax or
    std grew more than `GROWTH` times (one flag per figure). A change far smaller than its
    peers' (a rarely routed expert) is no alarm."""
    by_module: dict[str, list] = {}
    for found in anomalies(catalog, table, places=places):
        if found.reason.startswith("change ") and "× larger" in found.reason:
            by_module.setdefault(place(found.name).module, []).append(found)
    flags = [Flag("outlier", "warn", [f.name for f in found], f"{found[0].name}: {found[0].reason}" +
                  (f" (and {len(found) - 1:,} more of {module})" if len(found) > 1 else ""))
             for module, found in by_module.items()]
    v = table.values
    for figure, label in ((c.ABSMAX, "absmax"), (c.STD, "std")):
        a, b = v[:, c.FA + figure], v[:, c.FB + figure]
        with np.errstate(divide="ignore", invalid="ignore"):  # grown from 0 (a norm's ones) has no factor
            ratio = np.where(np.nan_to_num(a) > 0, np.nan_to_num(b / a), 0.0)
        grown = np.flatnonzero(ratio > GROWTH)
        if len(grown):
            grown = grown[np.argsort(-ratio[grown], kind="stable")]
            i = int(grown[0])
            flags.append(Flag("outlier", "warn", [catalog.names[j] for j in grown.tolist()],
                              f"{catalog.names[i]}: {label} grew {ratio[i]:.3g}× ({a[i]:.3g} → {b[i]:.3g})" +
                              (f" (and {len(grown) - 1:,} more tensors by over {GROWTH:g}×)" if len(grown) > 1 else "")))
    return flags


def frozen_suspect_flags(catalog: Catalog, table: ResultTable, parts: Parts) -> list[Flag]:
    """A module type's matrices changed in most layers but bit-identical in a few, scattered
    ones: a freezing mistake? Freezing the first or last layers on purpose leaves a run at one
    end, which is not flagged (the verdict names it). A norm's update can round away: vectors
    are left out."""
    mask = np.isin(table.status, SAME_SHAPE) & ~catalog.factor & parts.matrix & (parts.layer >= 0)
    if not mask.any():
        return []
    span = int(parts.layer.max()) + 1
    cells, cell_of = np.unique(parts.module[mask] * span + parts.layer[mask], return_inverse=True)
    unequal = np.bincount(cell_of, weights=~np.isin(table.status[mask], EQUAL), minlength=len(cells)) > 0
    flags = []
    for module in np.unique(cells // span).tolist():
        mine = cells // span == module
        order, still = cells[mine] % span, (cells[mine] % span)[~unequal[mine]]
        k = len(still)
        if not k or k * 2 >= len(order) or (still == order[:k]).all() or (still == order[-k:]).all():
            continue  # none, most, or a run at one end (frozen on purpose)
        found = np.flatnonzero(mask & (parts.module == module) & np.isin(parts.layer, still)).tolist()
        name = parts.module_names[module]
        flags.append(Flag("frozen_suspect", "warn", [catalog.names[i] for i in found],
                          f"{name} changed in {len(order) - k} of {len(order)} layers but is bit-identical in "
                          f"{layer_ranges([str(n) for n in still.tolist()])}: frozen by mistake?"))
    return flags


# Text


def text_lines(verdict: Verdict) -> list[str]:
    """The verdict as `diff` prints it first."""
    lines = [f"verdict: {verdict.kind} ({verdict.confidence} confidence): {verdict.summary}"]
    lines += [f"   {fact}" for fact in verdict.facts]
    lines += [f"{flag.severity.upper():5}  {flag.code}: {flag.message}" for flag in verdict.flags]
    return lines
