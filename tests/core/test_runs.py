"""Training runs: `weightscope diff BASE RUN_DIR/` on runs written by a tiny model trained with
torch.optim and saved as the HF Trainer saves (safetensors or .bin, with optimizer.pt,
scheduler.pt, rng_state.pth and trainer_state.json beside the weights). Figures are checked
against float64 numpy; flags against what each run was made to hold; the cache per step
against the bytes a second scan reads."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weightscope.cli import main
from weightscope.engine import protocol as msg
from weightscope.engine.client import Engine
from weightscope.sources.runs import plan_run


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


class Tiny(torch.nn.Module):
    """An embedding, two layers of two Linears each, and an output head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 8)
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"fc1": torch.nn.Linear(8, 16), "fc2": torch.nn.Linear(16, 8)})
                                          for _ in range(2))
        self.head = torch.nn.Linear(8, 32)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = x + layer["fc2"](torch.relu(layer["fc1"](x)))
        return self.head(x)


def trained(model: Tiny, optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens = torch.randint(0, 32, (4, 6), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 32), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def state(model: Tiny) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save(directory, sd: dict[str, torch.Tensor], optimizer, step: int, bin_format: bool = False) -> None:
    """A checkpoint as the HF Trainer writes one: weights, optimizer and scheduler state, RNG state, trainer state."""
    os.makedirs(directory)
    if bin_format:
        torch.save(sd, os.path.join(directory, "pytorch_model.bin"))
    else:
        save_file(sd, os.path.join(directory, "model.safetensors"))
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    torch.save({"last_epoch": step}, os.path.join(directory, "scheduler.pt"))
    torch.save({"python": 1}, os.path.join(directory, "rng_state.pth"))
    with open(os.path.join(directory, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step, "log_history": []}, f)


@pytest.fixture
def run(tmp_path):
    """base/ and out/checkpoint-{500,...,3000}: layer 0 frozen throughout; 1500 identical to 1000
    (stalled); 2000 the base again (reverted); from 2500 a NaN in layers.1.fc1.weight; and
    out/checkpoint-3500 incomplete (its index names a shard that is missing)."""
    torch.manual_seed(0)
    model = Tiny()
    for p in model.layers[0].parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    base = state(model)
    save(tmp_path / "base", base, optimizer, 0)
    saved = {}
    out = tmp_path / "out"
    for step, seed in ((500, 1), (1000, 2)):
        trained(model, optimizer, 3, seed)
        saved[step] = state(model)
    saved[1500] = saved[1000]
    saved[2000] = base
    trained(model, optimizer, 3, 3)
    saved[2500] = state(model)
    trained(model, optimizer, 3, 4)
    saved[3000] = state(model)
    for step in (2500, 3000):
        saved[step] = dict(saved[step])
        bad = saved[step]["layers.1.fc1.weight"].clone()
        bad[2, 3] = math.nan
        saved[step]["layers.1.fc1.weight"] = bad
    for step in sorted(saved):
        save(out / f"checkpoint-{step}", saved[step], optimizer, step)
    broken = out / "checkpoint-3500"
    os.makedirs(broken)
    save_file({k: v for k, v in saved[3000].items() if k.startswith("embed")}, str(broken / "model-00001-of-00002.safetensors"))
    with open(broken / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: ("model-00001-of-00002.safetensors" if k.startswith("embed")
                                                      else "model-00002-of-00002.safetensors") for k in saved[3000]}}, f)
    return tmp_path / "base", out, base, saved


def diff(capsys, *argv) -> tuple[int, str, str]:
    code = main(["diff", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def reference_figures(ref: dict, steps: list[dict]) -> dict[str, dict[str, list]]:
    """Drift, cosine, update, absmax and NaN/Inf per tensor and step, in float64 numpy."""
    out = {}
    for name in ref:
        r = ref[name].double().numpy().ravel()
        found = {key: [] for key in ("drift", "cosine", "update", "absmax", "nonfinite")}
        previous = r
        for sd in steps:
            s = sd[name].double().numpy().ravel()
            both = np.isfinite(r) & np.isfinite(s)
            rr = float(r[both] @ r[both])
            found["drift"].append(math.sqrt(float(((s - r)[both]) @ ((s - r)[both])) / rr) if rr > 0 else None)
            ss = float(s[both] @ s[both])
            found["cosine"].append(float(r[both] @ s[both]) / math.sqrt(rr * ss) if rr > 0 and ss > 0 else None)
            both = np.isfinite(previous) & np.isfinite(s)
            pp = float(previous[both] @ previous[both])
            u = (s - previous)[both]
            found["update"].append(math.sqrt(float(u @ u) / pp) if pp > 0 else None)
            finite = s[np.isfinite(s)]
            found["absmax"].append(float(np.abs(finite).max()) if finite.size else None)
            found["nonfinite"].append(int((~np.isfinite(s)).sum()))
            previous = s
        out[name] = found
    return out


def close(found, expected, rtol=1e-9) -> bool:
    return all((a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=rtol,
                                                                                             abs_tol=1e-15))
               for a, b in zip(found, expected))


def test_steps_in_numeric_order_and_incomplete_skipped(run):
    base, out, _, _ = run
    spec = plan_run([str(base), str(out)])
    assert [p.step for p in spec.steps] == [500, 1000, 1500, 2000, 2500, 3000, 3500]
    assert plan_run([str(base), str(out / "checkpoint-500")]) is None  # two checkpoints: a pair, as before


def test_run_figures_and_flags(capsys, run):
    base, out, base_sd, saved = run
    code, text, err = diff(capsys, base, out, "--json")
    assert code == 1, err
    doc = json.loads(text)
    assert [s["step"] for s in doc["steps"]] == [500, 1000, 1500, 2000, 2500, 3000]
    assert any("checkpoint-3500" in note and "missing" in note for note in doc["notes"])
    expected = reference_figures(base_sd, [saved[s] for s in (500, 1000, 1500, 2000, 2500, 3000)])
    for tensor in doc["tensors"]:
        want = expected[tensor["name"]]
        for key in ("drift", "cosine", "update", "absmax"):
            assert close(tensor[key], want[key]), (tensor["name"], key, tensor[key], want[key])
        assert tensor["nonfinite"] == want["nonfinite"]
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["layers.0.fc1.weight"]["status"] == ["identical"] * 6
    assert by_name["head.weight"]["status"][3] == "identical"  # the revert
    assert by_name["head.weight"]["update"][2] == 0.0  # the stalled pair
    json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in the JSON"))  # null, never NaN
    flags = {(f["code"], f["step"]): f for f in doc["flags"]}
    assert ("stalled", 1500) in flags
    assert ("reverted", 2000) in flags and "equal to the reference again" in flags[("reverted", 2000)]["message"]
    assert flags[("first_nonfinite", 2500)]["tensors"] == ["layers.1.fc1.weight"]
    frozen = flags[("frozen", None)]
    assert sorted(frozen["tensors"]) == sorted(n for n in base_sd if n.startswith("layers.0."))
    assert "layer 0 never changed" in frozen["message"]
    assert doc["flags"][0]["severity"] == "error"
    assert doc["groups"][0]["name"] == "all tensors"

    code, text, err = diff(capsys, base, out, "--fail-on", "error")
    assert code == 1 and "FLAG error first_nonfinite" in err
    assert "✖ error first_nonfinite" in text and "layers.1 " in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bin_run_in_paths_given_in_order(capsys, tmp_path, dtype):
    """`.bin` checkpoints named in order on the command line; the first is the reference. Each
    stored dtype's loop (bfloat16 and float32 summed from the bytes, float16 decoded first)
    agrees with float64 over the stored values."""
    torch.manual_seed(1)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = []
    for k in range(4):
        if k:
            trained(model, optimizer, 2, k)
        saved.append({name: t.to(dtype) for name, t in state(model).items()})
        save(tmp_path / f"step_{k}", saved[-1], optimizer, k, bin_format=True)
    code, text, err = diff(capsys, *(tmp_path / f"step_{k}" for k in range(4)), "--json")
    assert code == 1, err
    doc = json.loads(text)
    assert [s["step"] for s in doc["steps"]] == [1, 2, 3] and doc["reference"]["format"] == "pytorch"
    expected = reference_figures(saved[0], saved[1:])
    for tensor in doc["tensors"]:
        for key in ("drift", "cosine", "update", "absmax"):
            assert close(tensor[key], expected[tensor["name"]][key]), (tensor["name"], key)
    assert not [f for f in doc["flags"] if f["severity"] != "info"]
    code, _, err = diff(capsys, *(tmp_path / f"step_{k}" for k in range(4)), "--fail-on", "warn")
    assert code == 0, err


def test_bad_input_one_line_exit_2(capsys, tmp_path):
    os.makedirs(tmp_path / "run" / "checkpoint-1")
    code, out, err = diff(capsys, tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "two checkpoints" in err
    os.makedirs(tmp_path / "run" / "checkpoint-2")  # a reference without weights
    code, out, err = diff(capsys, tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "checkpoint-1: no weights" in err and "Traceback" not in err
    code, out, err = diff(capsys, tmp_path / "missing.safetensors")
    assert code == 2 and err.count("\n") == 1


def scan(paths: list[str]) -> tuple[msg.RunDone, dict]:
    """The engine's scan of a run: what it says at the end, and every tensor's rows."""
    with Engine(msg.RunJob(plan_run(paths)), helpers=1) as engine:
        opened = engine.recv()
        assert isinstance(opened, msg.RunOpened), opened
        engine.send(msg.Scan())
        rows = {}
        while not isinstance(message := engine.recv(), msg.RunDone):
            assert isinstance(message, msg.RunResults), message
            for j, i in enumerate(message.rows.tolist()):
                rows[opened.catalog.names[i]] = message.sums[j]
            engine.send(msg.Ack(message.number))
        return message, rows


def test_one_more_checkpoint_reads_only_what_it_needs(run):
    base, out, _, saved = run
    (out / "checkpoint-3500").rename(out / "broken")
    first, rows = scan([str(base), str(out)])
    assert first.complete and first.cached == []
    size = {step: os.path.getsize(out / f"checkpoint-{step}" / "model.safetensors") for step in saved}
    assert 0 < first.read[0] < os.path.getsize(base / "model.safetensors")
    again, same_rows = scan([str(base), str(out)])
    assert again.read == [0] * 7 and again.cached == [1, 2, 3, 4, 5, 6]
    for name, sums in rows.items():
        np.testing.assert_array_equal(np.nan_to_num(sums), np.nan_to_num(same_rows[name]))
    save(out / "checkpoint-4000", saved[1000], torch.optim.SGD([torch.zeros(1)], lr=1), 4000)
    more, _ = scan([str(base), str(out)])
    assert more.cached == [1, 2, 3, 4, 5, 6]
    # the reference, the predecessor (3000) and the new checkpoint: data bytes only, nothing else
    read = dict(enumerate(more.read))
    assert [k for k, n in read.items() if n] == [0, 6, 7]
    assert read[6] < size[3000] and read[7] < os.path.getsize(out / "checkpoint-4000" / "model.safetensors")
    assert [f.code for f in more.flags if f.index == 6] == []
