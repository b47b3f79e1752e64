"""Inside a layer: a change split by attention head and by MoE expert.

"q_proj changed by 3%" hides whether every head moved a little or two heads changed
completely. Here a tensor is split into the runs of rows or columns each head (or expert)
owns, and each run gets the figures of the whole tensor's difference:

- rel L2 ‖ΔW_h‖ / ‖W_h‖ (A's slice; undefined where that slice is zero),
- max |Δ| over the slice,
- cosine A_h·B_h / (‖A_h‖ ‖B_h‖) (undefined where either slice is zero),

over the positions finite on both sides (the others are counted), summed in float64.

Head counts come from `config.json` beside the weights (A's, else B's), from GGUF metadata
(`{arch}.attention.head_count`, `head_count_kv`), or from `--heads N[,KV]`, which wins. A
multimodal config's vision (or audio) tower has counts of its own, from its `vision_config`:
its tensors (under `vision_tower`, `vision_model`, `visual`, ...) never take the text model's,
and where that sub-config gives none, they say so.

The layouts, for H query heads, K key/value heads and head size d (a query head h reads
key/value head h // (H / K)):

- q, k, v (`q_proj`, BERT's `query`, T5's `SelfAttention.q`, ...): rows, d per head; o
  (`o_proj`, `dense`, `attention.wo`, ...): columns, d per query head (GPT-2's `attn.c_proj`
  is a Conv1D, stored transposed: rows). T5's feed-forward `DenseReluDense.wo` is no head's.
- fused blocks (`qkv_proj`, `Wqkv`, `c_attn` stored as a Linear, as Qwen's and StarCoder's,
  whose `multi_query` means K = 1): rows q (H·d) | k (K·d) | v (K·d);
  GPT-2's `c_attn` Conv1D [hidden, 3·hidden]: the same by columns.
- `query_key_value` (GPT-NeoX, BLOOM, Falcon): rows in K groups of H/K query heads then one
  k and one v head (NeoX's per-head q|k|v interleave when K = H, Falcon's multi-query block
  when K = 1; ChatGLM's stores blocks, as `qkv_proj`).
- biases split as their weights' split axis; an output projection's bias is added after the
  heads are summed, so it has none.

Experts: fused expert tensors (`experts.gate_up_proj` [experts, …], `experts.down_proj`,
their biases) by their first dimension; a router (`mlp.gate`, `router`) by rows, one per
expert. Named experts (`experts.N.w1`) are tensors of their own: `expert_rollups` combines
the scan's figures of each expert's tensors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.reading import as_bytes
from weightscope.compare.stats import Cancelled, code_of, itemsize

CONFIG = "config.json"
CONFIG_MAX = 4 << 20  # bytes: a model config is a few KB; anything larger is not one
CHUNK = 1 << 22  # elements of each side decoded at a time
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num", "num_query_groups")
HEAD_DIM_KEYS = ("head_dim", "d_kv", "kv_channels")  # T5's d_kv, Qwen's and ChatGLM's kv_channels
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# Models whose `c_attn`/`c_proj` are nn.Linear (rows out), not GPT-2's Conv1D (columns out).
LINEAR_C_ATTN = {"qwen", "gpt_bigcode"}
# Multi-query attention (one key/value head) where `multi_query` is true, as it is by default:
# Falcon-7B's (not its new decoder), StarCoder's (gpt_bigcode).
MULTI_QUERY = {"falcon", "RefinedWeb", "RefinedWebModel", "gpt_bigcode"}
# A multimodal config's encoders whose heads its sub-configs count, and the modules they live in.
TOWERS = {
    "vision": ("vision_config", ("vision_tower", "vision_model", "visual", "vision_encoder", "vision", "vpm",
                                 "vision_backbone", "image_encoder", "img_processor")),
    "audio": ("audio_config", ("audio_tower", "audio_model", "audio_encoder")),
}
BLOCKED_QUERY_KEY_VALUE = {"chatglm"}

# The projection a tensor is, from the last parts of its name (parameter suffix removed).
ROLES = [
    (r"(^|\.)(c_attn|qkv_proj|wqkv|attn_qkv|qkv)$", "qkv"),
    (r"(^|\.)query_key_value$", "query_key_value"),
    (r"(^|\.)(q_proj|query|wq|q_lin|attn_q|(selfattention|encdecattention)\.q)$", "q"),
    (r"(^|\.)(k_proj|key|wk|k_lin|attn_k|(selfattention|encdecattention)\.k)$", "k"),
    (r"(^|\.)(v_proj|value|wv|v_lin|attn_v|(selfattention|encdecattention)\.v)$", "v"),
    (r"(^|\.)attn\.c_proj$", "c_proj"),
    # `wo` is an attention output only inside attention (Meta's `attention.wo`): T5's feed-forward
    # `DenseReluDense.wo` is none
    (r"(^|\.)(o_proj|out_proj|(attention|attn|self_attn)\.wo|out_lin|attn_output|attention\.output\.dense"
     r"|self_attn\.dense|self_attention\.dense|attention\.dense|(selfattention|encdecattention)\.o)$", "o"),
    (r"(^|\.)experts\.(gate_up_proj|down_proj|gate_proj|up_proj)(_bias)?$", "experts"),
    (r"(^|\.)(mlp\.gate|block_sparse_moe\.gate|router|moe\.gate)$", "router"),
]
PARAMETERS = ("weight", "bias")
NAMED_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.")


class SplitError(ValueError):
    """A tensor that should split by head or expert does not (its shape and the counts disagree)."""


@dataclass(frozen=True)
class HeadConfig:
    """What splits attention into heads.

    Attributes:
        heads, kv_heads: query heads, key/value heads (kv_heads = heads without GQA).
        head_dim: the config's, where it gives one (else each tensor's size / heads).
        experts: the config's expert count, where it gives one.
        model_type: the config's, where there is one (it decides a few layouts).
        source: where the counts come from, for the user.
    """

    heads: int
    kv_heads: int
    head_dim: int | None = None
    experts: int | None = None
    model_type: str | None = None
    source: str = ""

    def describe(self) -> str:
        dim = f", head_dim {self.head_dim}" if self.head_dim else ""
        plural = "s" if self.kv_heads > 1 else ""
        kv = f", {self.kv_heads} key/value head{plural}" if self.kv_heads != self.heads else ""
        return f"{self.heads} heads{kv}{dim} ({self.source})"


@dataclass(frozen=True)
class Known:
    """The head counts of a comparison, or why there are none.

    Attributes:
        config: None when no head count is known (then `why` says so).
        notes: what the user should know (configs that disagree, one that cannot be read).
        experts_only: a config without head counts may still give the expert count.
    """

    config: HeadConfig | None
    why: str = ""
    notes: tuple[str, ...] = ()
    experts: int | None = None
    towers: tuple[Tower, ...] = ()

    def counts(self, name: str) -> tuple[HeadConfig | None, str]:
        """The head counts for one tensor, or why it has none: a multimodal model's vision (or
        audio) tower has counts of its own (never the text model's)."""
        if self.towers:
            parts = name.split(".")
            for tower in self.towers:
                if any(part in tower.modules for part in parts):
                    return tower.config, tower.why
        return self.config, self.why


@dataclass(frozen=True)
class Tower:
    """A multimodal model's encoder (its vision tower) with head counts of its own.

    Attributes:
        modules: a tensor with one of these names among its parts is the tower's.
        config: its sub-config's counts; None when the config gives none (then `why` says so).
    """

    name: str
    modules: tuple[str, ...]
    config: HeadConfig | None
    why: str = ""

    def describe(self) -> str:
        return f"{self.name} tower: {self.config.describe()}" if self.config else self.why


# Where head counts come from


def positive(value) -> int | None:
    """A count from a config: a positive integer (a boolean is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def first_count(config: dict, keys: tuple[str, ...]) -> int | None:
    return next((positive(config[k]) for k in keys if positive(config.get(k)) is not None), None)


def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} given twice")
    return dict(pairs)


def read_config(path: str) -> dict:
    """A config.json as a dict.

    Raises:
        ValueError: not a regular file of at most `CONFIG_MAX` bytes holding a JSON object
            (the message is one line, naming the file).
    """
    try:
        info = os.stat(path)
        if not os.path.isfile(path):
            raise ValueError("not a regular file")
        if info.st_size > CONFIG_MAX:
            raise ValueError(f"{info.st_size:,} bytes, more than a config holds")
        with open(path, "rb") as f:
            text = f.read(CONFIG_MAX + 1)
        config = json.loads(text, object_pairs_hook=no_duplicates)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        if isinstance(exc, json.JSONDecodeError):
            why = f"not JSON ({exc.msg} at line {exc.lineno})"
        raise ValueError(f"{path}: {why}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    return config


def from_config(config: dict, path: str) -> tuple[HeadConfig | None, int | None, str]:
    """(head counts, expert count, why none) of a parsed config.json; a multimodal config's
    `text_config` where the top level has none."""
    text = config.get("text_config")
    if first_count(config, HEAD_KEYS) is None and isinstance(text, dict):
        config = {**text, "model_type": text.get("model_type", config.get("model_type"))}
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    experts = first_count(config, EXPERT_KEYS)
    heads = first_count(config, HEAD_KEYS)
    if heads is None:
        return None, experts, f"{path} gives no head count ({' / '.join(HEAD_KEYS[:2])})"
    kv = first_count(config, KV_KEYS) or heads
    if model_type in MULTI_QUERY and not config.get("new_decoder_architecture") \
            and config.get("multi_query", True) is True:
        kv = 1  # multi-query attention: one key/value head
    if heads % kv:
        return None, experts, f"{path}: {heads} heads do not split into {kv} key/value groups"
    return HeadConfig(heads, kv, first_count(config, HEAD_DIM_KEYS), experts, model_type,
                      f"{CONFIG} beside the weights"), experts, ""


def towers_of(config: dict, path: str) -> tuple[Tower, ...]:
    """A multimodal config's towers (a `text_config`, `vision_config` or `audio_config` in it):
    each with its sub-config's counts, or why it has none. None for any other config."""
    if not any(isinstance(config.get(key), dict) for key in ("text_config", *(k for k, _ in TOWERS.values()))):
        return ()
    out = []
    for name, (key, modules) in TOWERS.items():
        sub = config.get(key)
        if not isinstance(sub, dict):
            out.append(Tower(name, modules, None, f"head count unknown for the {name} tower: {path} has no {key}"))
            continue
        found, _, why = from_config({k: v for k, v in sub.items() if k != "text_config"}, f"{path}'s {key}")
        source = f"{key} in {CONFIG} beside the weights"
        out.append(Tower(name, modules, found and replace(found, source=source, experts=None),
                         "" if found else f"head count unknown for the {name} tower: {why}"))
    return tuple(out)


def config_paths(path: str, files: list[str]) -> list[str]:
    """Where a checkpoint's config.json would be: in its directory, or beside its file."""
    folders = [path] if os.path.isdir(path) else [os.path.dirname(path)] if os.path.isfile(path) else []
    folders += [os.path.dirname(f) for f in files[:1]]
    return list(dict.fromkeys(os.path.join(folder or ".", CONFIG) for folder in folders))


def gguf_counts(metadata: dict[str, str]) -> tuple[HeadConfig | None, str]:
    """Head counts from a GGUF file's metadata (display strings), where it has them."""
    arch = metadata.get("general.architecture")
    if not arch:
        return None, ""
    heads, kv = metadata.get(f"{arch}.attention.head_count"), metadata.get(f"{arch}.attention.head_count_kv")
    if heads is None:
        return None, f"the GGUF metadata has no {arch}.attention.head_count"
    if not heads.isdecimal() or (kv is not None and not kv.isdecimal()):
        return None, f"the GGUF metadata gives head counts per layer ({arch}.attention.head_count = {heads[:40]})"
    experts = metadata.get(f"{arch}.expert_count")
    key = metadata.get(f"{arch}.attention.key_length")
    n, k = int(heads), int(kv) if kv is not None else int(heads)
    if n == 0 or k == 0 or n % k:
        return None, f"the GGUF metadata's head counts {n} and {k} do not split into groups"
    return HeadConfig(n, k, int(key) if key and key.isdecimal() else None,
                      int(experts) if experts and experts.isdecimal() else None, None, "GGUF metadata"), ""


def parse_override(text: str) -> tuple[int, int]:
    """`--heads N[,KV]` as (heads, kv_heads).

    Raises:
        ValueError: not one or two positive integers, or heads not a multiple of KV.
    """
    parts = text.split(",")
    if not 1 <= len(parts) <= 2 or not all(p.strip().isdecimal() and int(p) > 0 for p in parts):
        raise ValueError(f"--heads {text!r}: give N or N,KV (positive integers)")
    heads, kv = int(parts[0]), int(parts[-1])
    if heads % kv:
        raise ValueError(f"--heads {text!r}: {heads} heads do not split into {kv} key/value groups")
    return heads, kv


def known_heads(sides: list, override: tuple[int, int] | None = None) -> Known:
    """The head counts for a comparison: `--heads` first, then A's config.json or GGUF
    metadata, then B's. `sides`: the catalog's side summaries (path, files, metadata)."""
    found: list[HeadConfig] = []
    notes: list[str] = []
    whys: list[str] = []
    experts = None
    towers: tuple[Tower, ...] | None = None
    for side in sides:
        if side is None:
            continue
        config = None
        for path in config_paths(side.path, side.files):
            if not os.path.exists(path):
                continue
            try:
                parsed = read_config(path)
                config, count, why = from_config(parsed, path)
            except ValueError as exc:
                notes.append(f"head counts: {exc}")
                break
            experts = experts or count
            if towers is None:
                towers = towers_of(parsed, path)
            if config is None:
                whys.append(why)
            break
        if config is None and side.format == "gguf":
            config, why = gguf_counts(side.metadata)
            if why:
                whys.append(why)
        if config is not None:
            found.append(config)
    if len(found) == 2 and (found[0].heads, found[0].kv_heads) != (found[1].heads, found[1].kv_heads):
        notes.append(f"head counts: A has {found[0].describe()}, B has {found[1].describe()}; A's are used")
    model_type = found[0].model_type if found else None
    if override is not None:
        heads, kv = override
        return Known(HeadConfig(heads, kv, None, found[0].experts if found else experts, model_type, "--heads"),
                     notes=tuple(notes), experts=experts, towers=towers or ())
    if found:
        return Known(found[0], notes=tuple(notes), experts=found[0].experts or experts, towers=towers or ())
    why = whys[0] if whys else f"no {CONFIG} beside the weights"
    return Known(None, f"head count unknown: {why} (use --heads N[,KV])", tuple(notes), experts, towers or ())


# How a tensor splits


@dataclass(frozen=True)
class Unit:
    """One head's (or expert's) share of a tensor.

    Attributes:
        part: "q", "k", "v", "o" (of attention), or "expert".
        index: the query head (q, o), the key/value head (k, v), or the expert.
        kv_head: the key/value head a query head reads, or that a k/v unit is; None for experts.
        readers: for a k or v unit, the query heads that read it.
    """

    part: str
    index: int
    kv_head: int | None = None
    readers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Split:
    """A tensor viewed as a rows × cols matrix, and which unit owns each row (or column).

    Attributes:
        kind: "heads" or "experts".
        role: "q", "k", "v", "o", "qkv", "experts" or "router".
        layout: how the split reads, in words.
        owner: per row (`by_rows`) or column, the index of its unit in `units`.
    """

    kind: str
    role: str
    layout: str
    shape: tuple[int, int]
    by_rows: bool
    owner: np.ndarray
    units: tuple[Unit, ...]
    head_dim: int | None = None


_roles: dict[str, str | None] = {}


def role_of(name: str) -> str | None:
    """The projection a tensor is, from its name; None for any other tensor."""
    key = re.sub(r"\d+", "0", name)  # the answer does not depend on the numbers: one lookup per kind of name
    if key not in _roles:
        _roles[key] = classify(name)
    return _roles[key]


def classify(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in PARAMETERS:
        parts = parts[:-1]
    module = ".".join(parts).lower()
    return next((role for pattern, role in ROLES if re.search(pattern, module)), None)


def head_units(part: str, heads: int, kv_heads: int) -> list[Unit]:
    group = heads // kv_heads
    if part in ("q", "o"):
        return [Unit(part, h, h // group) for h in range(heads)]
    return [Unit(part, g, g, tuple(range(g * group, (g + 1) * group))) for g in range(kv_heads)]


def blocks(parts: list[tuple[str, int]], heads: int, kv_heads: int, d: int) -> tuple[np.ndarray, list[Unit]]:
    """Owners of consecutive blocks: each (part, count) is `count` runs of d, in order."""
    units, owner = [], []
    for part, count in parts:
        for unit in head_units(part, heads, kv_heads)[:count]:
            owner.append(np.full(d, len(units)))
            units.append(unit)
    return np.concatenate(owner), units


def split_of(name: str, shape: tuple[int, ...], config: HeadConfig | None, experts: int | None = None) -> Split | None:
    """How a tensor splits by head or expert; None when it does not (not attention, not MoE,
    or no head count known for attention).

    Raises:
        SplitError: it should split, but its shape and the counts disagree (one line, naming it).
    """
    role = role_of(name)
    if role is None or not shape or math.prod(shape) == 0:
        return None
    if role in ("experts", "router"):
        return expert_split(name, role, shape, experts)
    if config is None:
        return None
    bias = name.endswith(".bias")
    if len(shape) != (1 if bias else 2):
        return None
    H, K = config.heads, config.kv_heads
    model = config.model_type

    def per_head(size: int, count: int, what: str) -> int:
        if size % count:
            raise SplitError(f"{name}: {size} {what} do not split into {count} heads")
        d = size // count
        if config.head_dim and d != config.head_dim:
            raise SplitError(f"{name}: {size} {what} are not {count} heads of head_dim {config.head_dim}")
        return d

    rows = shape[0]
    matrix = (rows, 1) if bias else (shape[0], shape[1])
    if role in ("q", "k", "v"):
        count = H if role == "q" else K
        d = per_head(rows, count, "rows")
        owner, units = blocks([(role, count)], H, K, d)
        return Split("heads", role, f"rows, {d} per {'query' if role == 'q' else 'key/value'} head", matrix, True,
                     owner, tuple(units), d)
    if role in ("o", "c_proj"):
        if bias:
            return None  # added after the heads are summed
        transposed = role == "c_proj" and model not in LINEAR_C_ATTN  # GPT-2's Conv1D: (in, out)
        size = shape[0] if transposed else shape[1]
        d = per_head(size, H, "rows" if transposed else "columns")
        owner, units = blocks([("o", H)], H, K, d)
        return Split("heads", "o", f"{'rows (Conv1D)' if transposed else 'columns'}, {d} per query head", matrix,
                     transposed, owner, tuple(units), d)
    # fused q, k, v
    conv1d = not bias and role == "qkv" and model not in LINEAR_C_ATTN and name.split(".")[-2] == "c_attn" \
        and shape[1] == 3 * shape[0] and K == H
    size = shape[1] if conv1d else rows
    d = per_head(size, H + 2 * K, "columns" if conv1d else "rows")
    if role == "query_key_value" and model not in BLOCKED_QUERY_KEY_VALUE:
        group = H // K  # per key/value head: its query heads, then its k and its v
        owner = np.repeat(np.arange(K * (group + 2)), d)
        units = []
        for g in range(K):
            units += [Unit("q", h, g) for h in range(g * group, (g + 1) * group)]
            units += [Unit(part, g, g, tuple(range(g * group, (g + 1) * group))) for part in ("k", "v")]
        layout = "rows, interleaved per head q|k|v" if group == 1 else f"rows, {group} q then k, v per key/value head"
        return Split("heads", "qkv", f"{layout}, {d} each", matrix, True, owner, tuple(units), d)
    owner, units = blocks([("q", H), ("k", K), ("v", K)], H, K, d)
    where = "columns (Conv1D)" if conv1d else "elements" if bias else "rows"
    return Split("heads", "qkv", f"{where}, q|k|v blocks, {d} per head", matrix, not conv1d, owner, tuple(units), d)


def expert_split(name: str, role: str, shape: tuple[int, ...], experts: int | None) -> Split | None:
    if role == "experts" and len(shape) < 2:
        return None
    count = shape[0]
    if experts is not None and count != experts:
        raise SplitError(f"{name}: {count} rows or slices, but the config has {experts} experts")
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    units = tuple(Unit("expert", e) for e in range(count))
    layout = "first dimension, one slice per expert" if role == "experts" else "rows, one per expert"
    return Split("experts", role, layout, (count, cols), True, np.arange(count), units)


# The figures of a split


@dataclass(frozen=True)
class UnitFigures:
    """One unit's figures (see the module docstring); None where undefined.

    Attributes:
        delta_sq, base_sq: ‖Δ_h‖² and ‖A_h‖², which roll up over several tensors.
        nonfinite: positions where either side is NaN or ±Inf (left out of the figures).
    """

    unit: Unit
    rel_l2: float | None
    max_abs: float | None
    cosine: float | None
    delta_sq: float
    base_sq: float
    nonfinite: int


@dataclass(frozen=True)
class Breakdown:
    """A tensor's change by head or expert."""

    kind: str
    role: str
    layout: str
    units: tuple[UnitFigures, ...]
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    source: str = ""

    def part(self, part: str) -> list[UnitFigures]:
        return [u for u in self.units if u.unit.part == part]


@dataclass(frozen=True)
class Unavailable:
    """Why a tensor has no breakdown (no head count known, a shape that does not split, ...)."""

    why: str


def unit_figures(split: Split, sums: np.ndarray) -> tuple[UnitFigures, ...]:
    """Per-row (or column) sums (`split_kernels.SUMS` × rows or columns) gathered by owner
    into each unit's figures."""
    n = len(split.units)
    gathered = np.stack([np.bincount(split.owner, sums[k], n) for k in (0, 1, 2, 3, 5)], axis=1)
    peak = np.zeros(n)
    np.maximum.at(peak, split.owner, sums[4])
    counts = np.bincount(split.owner, minlength=n)
    other = split.shape[1] if split.by_rows else split.shape[0]
    out = []
    for unit, (dd, aa, bb, ab, bad), top, size in zip(split.units, gathered.tolist(), peak.tolist(),
                                                      (counts * other).tolist()):
        finite = size - int(bad)
        out.append(UnitFigures(unit, math.sqrt(dd / aa) if aa > 0 else None, top if finite else None,
                               ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else None, dd, aa, int(bad)))
    return tuple(out)


def breakdown(raw_a, dtype_a: str, raw_b, dtype_b: str, split: Split, config: HeadConfig | None = None,
              should_cancel: Callable[[], bool] = lambda: False) -> Breakdown:
    """The figures of each unit of `split` for a pair's bytes (arrays or `reading.Bytes`).

    Raises:
        stats.Unsupported: a dtype without statistics. Cancelled: `should_cancel()` turned true.
    """
    from weightscope.compare import kernels
    from weightscope.compare.split_kernels import SUMS, split_sums

    raw_a, raw_b = as_bytes(raw_a), as_bytes(raw_b)
    code_a, code_b = code_of(dtype_a), code_of(dtype_b)
    size_a, size_b = itemsize(dtype_a), itemsize(dtype_b)
    rows, cols = split.shape
    numel = rows * cols
    sums = np.zeros((SUMS, rows if split.by_rows else cols))
    step = min(CHUNK, numel)
    wide_a, wide_b = np.empty(step), np.empty(step)
    narrow_a, narrow_b = np.empty(step, np.float32), np.empty(step, np.float32)
    for start in range(0, numel, step):
        if should_cancel():
            raise Cancelled
        count = min(step, numel - start)
        a = np.ascontiguousarray(raw_a.window(start * size_a, (start + count) * size_a))
        b = np.ascontiguousarray(raw_b.window(start * size_b, (start + count) * size_b))
        split_sums(a, code_a, b, code_b, count, start, cols, split.by_rows, sums, wide_a, wide_b, narrow_a, narrow_b,
                   kernels.TABLES)
    heads = (config.heads, config.kv_heads) if split.kind == "heads" and config is not None else (None, None)
    return Breakdown(split.kind, split.role, split.layout, unit_figures(split, sums), *heads, split.head_dim,
                     config.source if config is not None and split.kind == "heads" else "")


def pair_breakdown(name: str, shapes: tuple, dtypes: tuple, sides: tuple, known: Known,
                   should_cancel: Callable[[], bool] = lambda: False) -> Breakdown | Unavailable | None:
    """A pair's breakdown; `Unavailable` with the reason where it cannot have one, None where
    it is no attention or expert tensor at all."""
    shape_a, shape_b = shapes
    role = role_of(name)
    if role is None:
        return None
    if shape_a is None or shape_b is None or shape_a != shape_b:
        return Unavailable("a breakdown needs both sides, of one shape")
    if role in ("o", "c_proj") and name.endswith(".bias"):
        return None  # added after the heads are summed
    config, why = known.counts(name)
    if role not in ("experts", "router") and config is None:
        return Unavailable(why)
    try:
        split = split_of(name, shape_a, config, known.experts)
    except SplitError as exc:
        return Unavailable(str(exc))
    if split is None:
        return None
    return breakdown(sides[0], dtypes[0], sides[1], dtypes[1], split, config, should_cancel)


def undefined_why(figures: UnitFigures) -> dict[str, str]:
    """Why a unit's undefined figures are undefined."""
    why = {}
    if figures.max_abs is None:
        why["max_abs"] = "no position is finite on both sides"
    if figures.rel_l2 is None:
        why["rel_l2"] = "A's slice is all zeros"
    if figures.cosine is None:
        why["cosine"] = "a side's slice is all zeros"
    return why


# Experts stored as tensors of their own


@dataclass(frozen=True)
class ExpertRollup:
    """One expert of one MoE block: its tensors' change together.

    Attributes:
        block: the experts' module (`model.layers.3.mlp.experts`).
    """

    block: str
    expert: int
    tensors: int
    delta_sq: float
    base_sq: float
    changed: int

    @property
    def rel_l2(self) -> float | None:
        return math.sqrt(self.delta_sq / self.base_sq) if self.base_sq > 0 else None


def expert_rollups(catalog, table) -> dict[str, list[ExpertRollup]]:
    """Per MoE block (`….experts`), each named expert's change over its tensors (from the
    scan's figures: ‖Δ‖² = RMS² · finite count, ‖A‖² = L2²), experts in order."""
    read = np.flatnonzero(table.status != results.UNREAD).tolist()
    found: dict[tuple[str, int], list[int]] = {}
    for i in read:
        match = NAMED_EXPERT.match(catalog.names[i])
        if match:
            found.setdefault((match[1], int(match[2])), []).append(i)
    out: dict[str, list[ExpertRollup]] = {}
    changed_codes = (results.CODE["close"], results.CODE["changed"])
    for (block, expert), members in sorted(found.items()):
        values = table.values[members]
        rms, finite, l2 = values[:, c.FD + c.RMS], values[:, c.FA + c.FINITE], values[:, c.FA + c.L2]
        measured = ~(np.isnan(rms) | np.isnan(l2))
        delta = float(np.where(measured, np.nan_to_num(rms) ** 2 * np.nan_to_num(finite), 0).sum())
        base = float(np.where(measured, np.nan_to_num(l2) ** 2, 0).sum())
        changed = int(np.isin(table.status[members], changed_codes).sum())
        out.setdefault(block, []).append(ExpertRollup(block, expert, len(members), delta, base, changed))
    return out


def fused_rollups(catalog, breakdowns: dict) -> dict[str, list[ExpertRollup]]:
    """Per MoE block, each expert's change over its fused tensors' slices."""
    sums: dict[tuple[str, int], list] = {}
    for i, found in breakdowns.items():
        if not isinstance(found, Breakdown) or found.kind != "experts" or found.role != "experts":
            continue
        block = catalog.names[i].rsplit(".", 1)[0]
        for unit in found.units:
            entry = sums.setdefault((block, unit.unit.index), [0, 0.0, 0.0, 0])
            entry[0] += 1
            entry[1] += unit.delta_sq
            entry[2] += unit.base_sq
            entry[3] += unit.delta_sq > 0
    out: dict[str, list[ExpertRollup]] = {}
    for (block, expert), (tensors, delta, base, changed) in sorted(sums.items()):
        out.setdefault(block, []).append(ExpertRollup(block, expert, tensors, delta, base, changed))
    return out


def split_pairs(catalog, known: Known) -> list[int]:
    """The pairs that may split by head or expert: attention projections (when head counts
    are known, or a multimodal tower's are not: each says so) and expert tensors, on both
    sides in one shape."""
    out = []
    for i, name in enumerate(catalog.names):
        role = role_of(name)
        if role is None:
            continue
        if role not in ("experts", "router"):
            config, why = known.counts(name)
            if config is None and why == known.why:  # said once for all; a tower's own why, per tensor
                continue
        if catalog.a.shape[i] is not None and catalog.a.shape[i] == catalog.b.shape[i]:
            out.append(i)
    return out


# The overview's layers × heads and layers × experts


@dataclass(frozen=True)
class Inside:
    """The overview's layers inside the layers (`anatomy.Grid`s whose columns are heads or
    experts), and why there is no heads grid where there is none."""

    heads: object | None
    experts: object | None
    why: str = ""


def inside(catalog, table, known: Known, found: dict) -> Inside:
    """Layers × heads (a head's q, o and the k, v it reads, together) and layers × experts
    (each expert's tensors or fused slices, together), from the breakdowns of every pair."""
    from weightscope.analysis.anatomy import Cell, Grid, place

    head_cells: dict[tuple[str, str], dict] = {}
    expert_cells: dict[tuple[str, str], dict] = {}
    rows: dict[str, tuple] = {}

    def add(cells: dict, key: tuple[str, str], name: str, delta: float, base: float, bad: int) -> None:
        cell = cells.setdefault(key, {"delta": 0.0, "base": 0.0, "bad": 0, "parts": {}})
        cell["delta"] += delta
        cell["base"] += base
        cell["bad"] += bad
        d, b = cell["parts"].get(name, (0.0, 0.0))
        cell["parts"][name] = (d + delta, b + base)

    for i, result in found.items():
        if not isinstance(result, Breakdown):
            continue
        name = catalog.names[i]
        where = place(name)
        if where.layer is None:
            continue
        rows[where.row] = where.layer
        if result.kind == "experts":
            if result.role == "router":  # a router row is not the expert's own weights (the JSON has it)
                continue
            for unit in result.units:
                add(expert_cells, (where.row, f"e{unit.unit.index}"), name, unit.delta_sq, unit.base_sq,
                    unit.nonfinite)
            continue
        for unit in result.units:
            readers = unit.unit.readers or (unit.unit.index,)
            for head in readers:  # a k or v head counts for every query head that reads it
                add(head_cells, (where.row, f"h{head}"), name, unit.delta_sq, unit.base_sq, unit.nonfinite)
    read = np.flatnonzero(table.status != results.UNREAD).tolist()
    for j in read:  # experts stored as tensors of their own: the scan's figures
        match = NAMED_EXPERT.match(catalog.names[j])
        if match is None:
            continue
        where = place(catalog.names[j])
        values = table.values[j]
        rms, finite, l2 = values[c.FD + c.RMS], values[c.FA + c.FINITE], values[c.FA + c.L2]
        if where.layer is None or np.isnan(rms) or np.isnan(l2):
            continue
        rows[where.row] = where.layer
        add(expert_cells, (where.row, f"e{int(match[2])}"), catalog.names[j], float(rms) ** 2 * float(finite),
            float(l2) ** 2, 0)

    def grid(cells: dict) -> Grid | None:
        if not cells:
            return None
        out = {}
        for key, cell in cells.items():
            ranked = sorted(cell["parts"].items(), key=lambda kv: -(kv[1][0] / kv[1][1] if kv[1][1] else kv[1][0]))
            status = "nonfinite" if cell["bad"] else "changed" if cell["delta"] > 0 else "identical"
            out[key] = Cell(len(cell["parts"]), [n for n, _ in ranked], cell["delta"], cell["base"], {status})
        layer_rows = sorted({row for row, _ in out}, key=lambda r: rows[r])
        columns = sorted({col for _, col in out}, key=lambda col: int(col[1:]))
        return Grid(layer_rows, columns, out, [])

    return Inside(grid(head_cells), grid(expert_cells), known.why)
