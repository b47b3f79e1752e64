"""Write the README's screenshots: the real app on the demo pair (and, for the heads and experts
views, a small MoE pair written beside it; for a training run's views, a run of the demo's
base), as SVG files in screenshots/.

    python3 tests/make_screenshots.py [NAME.svg ... | runs]

With names, only those screenshots are written (the others keep their files; `runs`: a
training run's). Not a test (pytest does not collect it); run it after changing how the app
looks.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
SIZE = (120, 40)
# file name: keys pressed after the scan has finished
VIEWS = {
    "changed-tensor.svg": ["n", "n", "n", "n"],
    "verdict.svg": ["k"],
    "nan-tensor.svg": ["slash", *"up_proj", "enter", *["down"] * 13],
    "layer-summary.svg": ["n", "n", "n", "left", "left", "left"],
    "overview.svg": ["o", "down", "right", "right"],
    "spectrum.svg": ["n", "n", "n", "n", "v"],
    "change-map.svg": ["n", "n", "n", "n", "v", "v"],
    "resized.svg": ["right", "right"],  # lm_head.weight, grown by 8 rows
}
# On the MoE pair: file name -> (tensor to select first or None, keys, then keys once the
# overview has its heads and experts)
MOE_VIEWS = {
    "heads.svg": ("model.layers.2.self_attn.q_proj.weight", ["v", "v", "v"], []),
    "heads-grid.svg": ("model.layers.2.self_attn.q_proj.weight", ["v", "v", "v", "left", "left", "left"], []),
    "overview-experts.svg": (None, ["o"], ["v", "v", "down", "right", "right", "right"]),
}
LAYERS, HIDDEN, HEADS, KV_HEADS, EXPERTS, INTERMEDIATE = 4, 256, 16, 4, 8, 64


def write_moe(root: Path) -> tuple[str, str]:
    """A small Qwen-MoE-shaped base and a fine-tune that moved two query heads of layer 2 (their q
    and o slices; every other attention weight is untouched) and a few experts (the rest
    frozen), each beside its config.json."""
    import json

    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)

    def normal(*shape, scale=0.02):
        return torch.randn(*shape, generator=gen) * scale

    d = HIDDEN // HEADS
    base = {"model.embed_tokens.weight": normal(512, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        base[f"{p}.self_attn.q_proj.weight"] = normal(HEADS * d, HIDDEN)
        base[f"{p}.self_attn.k_proj.weight"] = normal(KV_HEADS * d, HIDDEN)
        base[f"{p}.self_attn.v_proj.weight"] = normal(KV_HEADS * d, HIDDEN)
        base[f"{p}.self_attn.o_proj.weight"] = normal(HIDDEN, HEADS * d)
        base[f"{p}.mlp.gate.weight"] = normal(EXPERTS, HIDDEN)
        for e in range(EXPERTS):
            base[f"{p}.mlp.experts.{e}.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
            base[f"{p}.mlp.experts.{e}.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
            base[f"{p}.mlp.experts.{e}.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE)
    tuned = {name: w.clone() for name, w in base.items()}
    for head, scale in ((5, 0.02), (9, 0.012)):  # both on screen in the layer's grid of heads
        tuned["model.layers.2.self_attn.q_proj.weight"][head * d:(head + 1) * d] += normal(d, HIDDEN, scale=scale)
        tuned["model.layers.2.self_attn.o_proj.weight"][:, head * d:(head + 1) * d] += normal(HIDDEN, d, scale=scale)
    for layer, expert, scale in ((1, 3, 0.004), (2, 3, 0.01), (2, 6, 0.002), (3, 0, 0.006)):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            w = tuned[f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"]
            w += normal(*w.shape, scale=scale)
        tuned[f"model.layers.{layer}.mlp.gate.weight"][expert] += normal(HIDDEN, scale=scale)
    config = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": HIDDEN,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_experts": EXPERTS,
              "num_hidden_layers": LAYERS, "torch_dtype": "bfloat16"}
    for label, weights in (("moe-base", base), ("moe-finetune", tuned)):
        (root / label).mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(root / label / "model.safetensors"),
                  metadata={"format": "pt"})
        (root / label / "config.json").write_text(json.dumps(config, indent=2))
    return "moe-base", "moe-finetune"


RUN_VIEWS = {
    # file name: (tensor to select, keys)
    "run-drift.svg": ("model.layers.3.self_attn.q_proj.weight", []),
    "run-heatmap.svg": ("model.layers.3.self_attn.q_proj.weight", ["o", "right", "right", "down"]),
}
RUN_STEPS = 8


def write_run(root: Path) -> tuple[str, str]:
    """A small Llama-shaped base and a run of `RUN_STEPS` checkpoints (checkpoint-250 … 2000):
    every layer drifts like √step, the deeper ones and the query projections more; the
    embeddings are frozen; checkpoint-1250 is saved twice (identical to 1000: stalled)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    hidden, layers = 64, 4
    base = {"model.embed_tokens.weight": torch.randn(256, hidden, generator=gen) * 0.02}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            base[f"{p}.self_attn.{proj}.weight"] = torch.randn(hidden, hidden, generator=gen) * 0.02
        for proj, shape in (("gate_proj", (128, hidden)), ("up_proj", (128, hidden)), ("down_proj", (hidden, 128))):
            base[f"{p}.mlp.{proj}.weight"] = torch.randn(*shape, generator=gen) * 0.02
        base[f"{p}.input_layernorm.weight"] = torch.ones(hidden)
    base["model.norm.weight"] = torch.ones(hidden)
    base["lm_head.weight"] = torch.randn(256, hidden, generator=gen) * 0.02
    noise = {name: torch.randn(*w.shape, generator=gen) for name, w in base.items()}
    (root / "run-base").mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16) for k, v in base.items()}, str(root / "run-base" / "model.safetensors"))
    for k in range(1, RUN_STEPS + 1):
        step = 250 * k
        t = (k - 1 if k == 5 else k) / RUN_STEPS  # 1250 saved as 1000 was
        weights = {}
        for name, w in base.items():
            if name.startswith("model.embed_tokens"):
                weights[name] = w
                continue
            layer = int(name.split(".")[2]) if ".layers." in name else layers
            rate = 0.02 * (1 + layer) * (3 if "q_proj" in name else 1)
            weights[name] = w + noise[name] * w.abs().mean() * rate * t ** 0.5
        out = root / "run" / f"checkpoint-{step}"
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(out / "model.safetensors"))
    return "run-base", "run"


async def shoot_run(paths: list[str], name: str, select: str, keys: list[str]) -> None:
    from ui.helpers import wait_for

    from weightscope.engine import protocol as msg
    from weightscope.sources.runs import plan_run
    from weightscope.ui.run_app import RunApp

    app = RunApp(msg.RunJob(plan_run(paths), use_cache=False), paths=paths)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.scan_done and app.ready)
        app.show_in_tree(select)
        await pilot.pause(0.3)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.2)
        await pilot.pause(0.5)
        app.clear_notifications()
        await pilot.pause()
        app.save_screenshot(str(SCREENSHOTS / name))


async def shoot(base: str, tuned: str, name: str, keys: list[str], select: str | None = None,
                inside: list[str] = ()) -> None:
    from ui.helpers import open_app, settle, wait_for

    from weightscope.ui.screens.overview import OverviewScreen

    app = open_app(base, tuned, use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        if select is not None:
            app.show_in_tree(select)
            await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        if inside:
            await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen) and len(app.screen.grids) > 1)
            await pilot.press(*inside)
        await pilot.pause(0.2)
        await settle(pilot)
        app.clear_notifications()
        await pilot.pause()
        app.save_screenshot(str(SCREENSHOTS / name))


def main(names: list[str]) -> None:
    """Every screenshot, or those named (`runs`: every one of a training run)."""
    from weightscope.paths import cache_dir

    names = set(names)
    if "runs" in names:
        names = (names - {"runs"}) | set(RUN_VIEWS)
    unknown = names - set(VIEWS) - set(MOE_VIEWS) - set(RUN_VIEWS)
    if unknown:
        raise SystemExit(f"no such screenshot: {', '.join(sorted(unknown))} "
                         f"(one of {', '.join([*VIEWS, *MOE_VIEWS, *RUN_VIEWS])}, or runs)")

    # A private result cache; the compiled loops keep theirs (compiling them takes half a minute).
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        from weightscope.demo import write_demo

        write_demo(Path(cache) / "demo")
        os.chdir(Path(cache) / "demo")  # relative paths: the title bar reads "A base   B finetune"
        SCREENSHOTS.mkdir(exist_ok=True)
        if not names or names & set(RUN_VIEWS):
            run = write_run(Path(cache) / "demo")
            for name, (select, keys) in RUN_VIEWS.items():
                if names and name not in names:
                    continue
                asyncio.run(shoot_run(list(run), name, select, keys))
                print(SCREENSHOTS / name)
        for name, keys in VIEWS.items():
            if names and name not in names:
                continue
            asyncio.run(shoot("base", "finetune", name, keys))
            print(SCREENSHOTS / name)
        moe = write_moe(Path(cache) / "demo")
        for name, (select, keys, inside) in MOE_VIEWS.items():
            if names and name not in names:
                continue
            asyncio.run(shoot(*moe, name, keys, select, inside))
            print(SCREENSHOTS / name)


if __name__ == "__main__":
    main(sys.argv[1:])
