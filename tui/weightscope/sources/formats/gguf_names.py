"""GGUF tensor names back to the Hugging Face names they were converted from, and which
Q/K rows llama.cpp's converter permuted on the way.

The `gguf` package's tables list, for every GGUF tensor, the names each model family gives
it (`model.layers.{bid}.self_attn.q_proj`, `layers.{bid}.attention.wq`, ...). A GGUF file
says its architecture but not which family's spelling its source used, so the spelling of
the Hugging Face `transformers` Llama family, which most architectures share, is preferred.
"""

from __future__ import annotations

import re

# MODEL_TENSOR name -> the preferred Hugging Face template, used when the tables list it.
PREFERRED = {
    "TOKEN_EMBD": "model.embed_tokens",
    "OUTPUT_NORM": "model.norm",
    "OUTPUT": "lm_head",
    "ATTN_NORM": "model.layers.{bid}.input_layernorm",
    "ATTN_Q": "model.layers.{bid}.self_attn.q_proj",
    "ATTN_K": "model.layers.{bid}.self_attn.k_proj",
    "ATTN_V": "model.layers.{bid}.self_attn.v_proj",
    "ATTN_OUT": "model.layers.{bid}.self_attn.o_proj",
    "ATTN_Q_NORM": "model.layers.{bid}.self_attn.q_norm",
    "ATTN_K_NORM": "model.layers.{bid}.self_attn.k_norm",
    "ATTN_POST_NORM": "model.layers.{bid}.post_attention_layernorm",
    "FFN_NORM": "model.layers.{bid}.post_attention_layernorm",
    "FFN_PRE_NORM": "model.layers.{bid}.pre_feedforward_layernorm",
    "FFN_POST_NORM": "model.layers.{bid}.post_feedforward_layernorm",
    "FFN_GATE": "model.layers.{bid}.mlp.gate_proj",
    "FFN_UP": "model.layers.{bid}.mlp.up_proj",
    "FFN_DOWN": "model.layers.{bid}.mlp.down_proj",
}
# Architectures whose converter applies `LlamaModel.permute` to q_proj/k_proj, turning
# Hugging Face's rotate-half rotary layout into llama.cpp's interleaved one (llama.cpp's
# conversion/llama.py, granite.py and deci.py; Llama 4 and Apertus set undo_permute = False).
PERMUTED = frozenset({"llama", "arcee", "llama-embed", "smollm3", "granite", "granitemoe", "granitehybrid", "deci"})
BLOCK = re.compile(r"blk\.(\d+)\.(.+)")
QK = re.compile(r"blk\.(\d+)\.attn_(q|k)\.(weight|bias)")


def split_suffix(name: str) -> tuple[str, str]:
    """`blk.0.attn_q.weight` -> (`blk.0.attn_q`, `.weight`); the tables name tensors without it."""
    base, _, last = name.rpartition(".")
    return (base, f".{last}") if base and last in ("weight", "bias") else (name, "")


def hf_names(arch: str, names: list[str]) -> dict[str, str]:
    """The Hugging Face name of each GGUF name the tables know for `arch` (others are left out)."""
    from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES
    from gguf.tensor_mapping import TensorNameMap

    model_arch = next((a for a, spelled in MODEL_ARCH_NAMES.items() if spelled == arch), None)
    if model_arch is None:
        return {}
    # TensorNameMap's constructor updates the class's shared block table in place with the
    # architecture's own entries (leaking them into every later map), so the tables are read here.
    blocks = {**TensorNameMap.block_mappings_cfg, **TensorNameMap.arch_block_mappings_cfg.get(model_arch, {})}
    templates = {}
    for tensor in MODEL_TENSORS[model_arch]:
        candidates = TensorNameMap.mappings_cfg.get(tensor) or blocks.get(tensor)
        if candidates:
            templates[TENSOR_NAMES[tensor]] = choose(tensor.name, candidates)
    out = {}
    for name in names:
        base, suffix = split_suffix(name)
        block = BLOCK.fullmatch(base)
        key, bid = (f"blk.{{bid}}.{block[2]}", block[1]) if block else (base, None)
        if key in templates:
            out[name] = templates[key].format(bid=bid) + suffix
    return out


def choose(tensor: str, candidates: tuple[str, ...]) -> str:
    """The preferred spelling when listed; else the first in the `model.` namespace; else the first."""
    if PREFERRED.get(tensor) in candidates:
        return PREFERRED[tensor]
    return next((c for c in candidates if c.startswith("model.")), candidates[0])


def permuted_heads(arch: str, kv: dict, name: str) -> int | None:
    """For a GGUF tensor whose rows llama.cpp's converter permuted, the head count it used.

    Q is permuted over the attention heads, K over the key-value heads (where they differ);
    per-layer head counts (DeciLM) are arrays indexed by the block.
    """
    match = QK.fullmatch(name)
    if arch not in PERMUTED or match is None:
        return None
    bid = int(match[1])
    heads = per_layer(kv.get(f"{arch}.attention.head_count"), bid)
    if match[2] == "k":
        heads = per_layer(kv.get(f"{arch}.attention.head_count_kv"), bid) or heads
    return heads


def per_layer(value, bid: int) -> int | None:
    if isinstance(value, tuple):
        value = value[bid] if bid < len(value) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def hf_row_order(rows: int, heads: int):
    """Row indices that put a permuted Q/K weight back in Hugging Face order: `hf = stored[order]`.

    The converter's `w.reshape(heads, 2, d/2, ...).swapaxes(1, 2)` moved row h·d + i·d/2 + j
    to h·d + 2j + i; this is the inverse.
    """
    import numpy as np

    return np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(-1)
