"""The demo pair: a small Llama-shaped base and its fine-tune, written once to the cache.

What a real fine-tune shows, in miniature: frozen embeddings and a frozen first layer
(identical), attention weights moved by a merged low-rank update, MLP weights moved by full
fine-tuning (one layer much more), norms nudged within tolerance, a few NaNs, an output
head resized for new tokens, and a tensor only the base still stores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from weightscope import __version__
from weightscope.paths import cache_dir

LAYERS, HIDDEN, INTERMEDIATE, VOCAB, NEW_TOKENS, RANK = 4, 256, 704, 2000, 8, 8


def base_weights(generator) -> dict:
    import torch

    def normal(*shape, scale=0.02):
        return torch.randn(*shape, generator=generator) * scale

    weights = {"model.embed_tokens.weight": normal(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            weights[f"{p}.self_attn.{proj}.weight"] = normal(HIDDEN, HIDDEN)
        weights[f"{p}.mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        weights[f"{p}.mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        weights[f"{p}.mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE)
        weights[f"{p}.input_layernorm.weight"] = 1 + normal(HIDDEN, scale=0.05)
        weights[f"{p}.post_attention_layernorm.weight"] = 1 + normal(HIDDEN, scale=0.05)
    weights["model.norm.weight"] = 1 + normal(HIDDEN, scale=0.05)
    weights["lm_head.weight"] = normal(VOCAB, HIDDEN)
    return weights


def fine_tune(base: dict, generator) -> dict:
    import torch

    def normal(*shape, scale):
        return torch.randn(*shape, generator=generator) * scale

    tuned = {}
    for name, w in base.items():
        if name.startswith(("model.embed_tokens", "model.layers.0.")):
            tuned[name] = w.clone()  # frozen
        elif ".self_attn." in name:
            tuned[name] = w + normal(w.shape[0], RANK, scale=0.02) @ normal(RANK, w.shape[1], scale=0.02)
        elif ".mlp." in name:
            tuned[name] = w + normal(*w.shape, scale=0.004 if "layers.3." in name else 0.0005)
        elif "norm" in name:
            tuned[name] = w + normal(*w.shape, scale=0.002)
        elif name == "lm_head.weight":
            tuned[name] = torch.cat([w, normal(NEW_TOKENS, HIDDEN, scale=0.02)])
    tuned["model.layers.2.mlp.up_proj.weight"][17, 3:6] = float("nan")
    return tuned


def write_demo(root: Path | None = None) -> tuple[str, str]:
    """The demo pair's directories, written on first use.

    Returns:
        (base directory, fine-tune directory).
    """
    import torch
    from safetensors.torch import save_file

    root = root or cache_dir() / "demo"
    base_dir, tuned_dir = root / "base", root / "finetune"
    stamp = root / "version"
    if stamp.exists() and stamp.read_text() == __version__:
        return str(base_dir), str(tuned_dir)
    generator = torch.Generator().manual_seed(0)
    base = base_weights(generator)
    tuned = fine_tune(base, generator)
    base["model.layers.0.self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, 32, 2) / 32))
    os.makedirs(base_dir, exist_ok=True)
    os.makedirs(tuned_dir, exist_ok=True)
    save_file({k: v.to(torch.bfloat16) if v.dim() > 1 or "norm" in k else v for k, v in base.items()},
              str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    names = list(tuned)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, group in halves.items():
        save_file({k: tuned[k].to(torch.bfloat16) for k in group}, str(tuned_dir / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, group in halves.items() for k in group}}
    (tuned_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (tuned_dir / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": VOCAB + NEW_TOKENS}))
    stamp.write_text(__version__)
    return str(base_dir), str(tuned_dir)
