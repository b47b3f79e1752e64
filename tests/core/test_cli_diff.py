"""`weightscope diff A B [--json]`: exit statuses, the JSON document's shape, stderr on failure."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from weightscope.cli import main

# The shape issue 2 fixes ("later issues add fields, never rename these").
TOP = {"version", "a", "b", "tensors", "summary", "lora_factors"}
SIDE = {"path", "format", "files", "tensors", "parameters", "bytes", "notes"}
TENSOR = {"name", "name_a", "name_b", "status", "dtype_a", "dtype_b", "shape_a", "shape_b", "error", "notes"}
SUMMARY = {"identical", "value_equal", "changed", "shape_mismatch", "only_a", "only_b", "error"}
# The only other keys allowed, each documented: the alignment's notes and each side's extras
# (issue 2's design), per-tensor statistics and the `close` status (issue 3).
TOP_EXTRA, SIDE_EXTRA = {"notes", "head_counts", "verdict"}, {"extras"}
TENSOR_EXTRA, SUMMARY_EXTRA = {"a", "b", "diff", "histograms", "spectrum", "heads", "experts", "overlap", "added"}, \
    {"close"}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["diff", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pair(ck, tmp_path):
    """A base checkpoint (safetensors), the same weights as .bin, and a fine-tune of layer 1 (.bin)."""
    sd = ck.llama_like(0)
    base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
    torch.save(sd, tmp_path / "same.bin")
    torch.save({n: t + 0.5 if ".layers.1." in n else t for n, t in sd.items()}, tmp_path / "tuned.bin")
    return sd, base, tmp_path / "same.bin", tmp_path / "tuned.bin"


def check_keys(what: str, keys, required: set, extra: set) -> None:
    keys = set(keys)
    assert required <= keys, f"{what} lacks {required - keys}"
    assert keys <= required | extra, f"{what} has undocumented keys {keys - required - extra}"


def check_document(doc: dict) -> None:
    """`doc` has exactly the documented keys at every level, with the documented types."""
    check_keys("top level", doc, TOP, TOP_EXTRA)
    assert isinstance(doc["version"], str)
    for side in ("a", "b"):
        check_keys(f"side {side}", doc[side], SIDE, SIDE_EXTRA)
        s = doc[side]
        assert isinstance(s["path"], str) and isinstance(s["format"], str)
        assert all(isinstance(f, str) for f in s["files"]) and all(isinstance(n, str) for n in s["notes"])
        assert all(isinstance(s[k], int) and not isinstance(s[k], bool) for k in ("tensors", "parameters", "bytes"))
    check_keys("summary", doc["summary"], SUMMARY, SUMMARY_EXTRA)
    factors = [t for t in doc["tensors"] if t["status"] == "factor"]
    assert sum(doc["summary"].values()) + len(factors) == len(doc["tensors"]) and doc["lora_factors"] == len(factors)
    for t in doc["tensors"]:
        check_keys(f"tensor {t.get('name')}", t, TENSOR, TENSOR_EXTRA)
        assert t["status"] in doc["summary"] or t["status"] == "factor"
        for side in ("a", "b"):
            assert t[f"name_{side}"] is None or isinstance(t[f"name_{side}"], str)
            assert t[f"dtype_{side}"] is None or t[f"dtype_{side}"] in ("float32", "bfloat16", "float16", "int64")
            shape = t[f"shape_{side}"]
            assert shape is None or all(isinstance(d, int) for d in shape)
        assert t["error"] is None or isinstance(t["error"], str)
        assert all(isinstance(n, str) for n in t["notes"])


class TestExitStatus:
    def test_identical_exits_0(self, capsys, pair):
        """Same weights in safetensors and .bin: exit 0, a table that says identical."""
        sd, base, same, _ = pair
        code, out, err = run(capsys, base, same)
        assert code == 0, err
        assert f"summary: {len(sd)} identical" in out
        assert "model.layers.1.mlp.up_proj.weight" in out
        assert err == ""

    def test_changed_exits_1(self, capsys, pair):
        """A fine-tune: exit 1, changed tensors named in the table."""
        _, base, _, tuned = pair
        code, out, _ = run(capsys, base, tuned)
        assert code == 1
        changed = [line for line in out.splitlines() if line.startswith("changed")]
        assert changed and all(".layers.1." in line for line in changed)

    def test_tied_only_on_one_side_exits_0(self, capsys, ck, tmp_path):
        """A tie stored once by safetensors is not a difference."""
        sd = ck.tied(ck.llama_like(1))
        torch.save(sd, tmp_path / "pytorch_model.bin")
        st = ck.write_safetensors(tmp_path / "model.safetensors",
                                  {n: t for n, t in sd.items() if n != "lm_head.weight"})
        code, out, _ = run(capsys, tmp_path / "pytorch_model.bin", st)
        assert code == 0
        assert "tied to model.embed_tokens.weight" in out

    def test_tensor_in_error_exits_1(self, capsys, ck, tmp_path):
        """A diff that reaches a damaged tensor exits 1 and shows why."""
        header, data = ck.packed({"a": torch.ones(4), "b": torch.zeros(4)})
        good = ck.write_safetensors(tmp_path / "good.safetensors", {"a": torch.ones(4), "b": torch.zeros(4)})
        header["b"]["data_offsets"] = [16, 64]
        (tmp_path / "bad.safetensors").write_bytes(ck.safetensors_bytes(header, data))
        code, out, _ = run(capsys, good, tmp_path / "bad.safetensors")
        assert code == 1
        assert any(line.startswith("error") and "data ends at byte" in line for line in out.splitlines())

    @pytest.mark.parametrize("make, why", [
        (lambda p: None, "No such file"),
        (lambda p: p.write_bytes(b"just some text, not weights"), "unrecognised first bytes"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.write_bytes(pickle.dumps({"w": print}, protocol=5)), "refused to unpickle"),
        (lambda p: p.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{" + b"x" * 70), "invalid JSON header"),
    ])
    def test_unreadable_input_exits_2(self, capsys, pair, tmp_path, make, why):
        """An input that cannot be opened: exit 2, nothing on stdout, one line on stderr naming it."""
        bad = tmp_path / "broken.bin"
        make(bad)
        for argv in ((pair[1], bad), (bad, pair[1])):
            code, out, err = run(capsys, *argv)
            assert code == 2
            assert out == ""
            assert err.count("\n") == 1 and err.startswith("weightscope: ")
            assert str(bad) in err and why in err


class TestJson:
    def test_heads_keep_the_documented_shape(self, capsys, pair):
        """`--heads 2` adds `head_counts` and each tensor's `heads` and `experts`, and nothing else."""
        _, base, _, tuned = pair
        code, out, _ = run(capsys, base, tuned, "--json", "--heads", "2")
        assert code == 1
        doc = json.loads(out)
        check_document(doc)
        assert doc["head_counts"]["heads"] == 2 and doc["head_counts"]["source"] == "--heads"
        q = next(t for t in doc["tensors"] if t["name"] == "model.layers.1.self_attn.q_proj.weight")
        assert [h["head"] for h in q["heads"]] == [0, 1] and q["experts"] is None
        assert all("heads" in t and "experts" in t for t in doc["tensors"])

    def test_shape_of_the_document(self, capsys, pair):
        """`--json` prints one document with exactly the documented keys; dtypes as torch spells them."""
        sd, base, _, tuned = pair
        code, out, _ = run(capsys, base, tuned, "--json")
        assert code == 1
        doc = json.loads(out)
        check_document(doc)
        assert doc["a"]["format"] == "safetensors" and doc["b"]["format"] == "pytorch"
        assert doc["a"]["tensors"] == len(sd) and doc["a"]["parameters"] == sum(t.numel() for t in sd.values())
        assert doc["a"]["bytes"] == 4 * doc["a"]["parameters"]
        assert doc["a"]["files"] == [str(base)]
        by_name = {t["name"]: t for t in doc["tensors"]}
        assert set(by_name) == set(sd)
        up = by_name["model.layers.1.mlp.up_proj.weight"]
        assert up["status"] == "changed" and up["dtype_a"] == up["dtype_b"] == "float32"
        assert up["shape_a"] == up["shape_b"] == [16, 8]
        assert doc["summary"]["changed"] == sum(".layers.1." in n for n in sd)

    def test_every_status_in_json(self, capsys, ck, tmp_path):
        """only_a/only_b, shape_mismatch, value_equal (bf16 spelled `bfloat16`) and error all serialise."""
        a = {"same": torch.ones(3), "gone": torch.ones(2), "grown": torch.ones(2, 2), "cast": torch.ones(4),
             "broken": torch.ones(4)}
        b = {"same": torch.ones(3), "new": torch.ones(2), "grown": torch.ones(3, 2),
             "cast": torch.ones(4, dtype=torch.bfloat16), "broken": torch.ones(4)}
        header, data = ck.packed(b)
        header["broken"]["shape"] = [5]
        (tmp_path / "b.safetensors").write_bytes(ck.safetensors_bytes(header, data))
        code, out, _ = run(capsys, ck.write_safetensors(tmp_path / "a.safetensors", a), tmp_path / "b.safetensors",
                           "--json")
        assert code == 1
        doc = json.loads(out)
        check_document(doc)
        status = {t["name"]: t["status"] for t in doc["tensors"]}
        assert status == {"same": "identical", "gone": "only_a", "new": "only_b", "grown": "shape_mismatch",
                          "cast": "value_equal", "broken": "error"}
        by_name = {t["name"]: t for t in doc["tensors"]}
        assert by_name["cast"]["dtype_b"] == "bfloat16"
        assert by_name["gone"]["name_b"] is None and by_name["gone"]["shape_b"] is None
        assert by_name["new"]["name_a"] is None and by_name["new"]["dtype_a"] is None
        assert by_name["grown"]["shape_b"] == [3, 2]
        assert "which needs" in by_name["broken"]["error"]

    def test_notes_and_extras(self, capsys, ck, tmp_path):
        """Name mappings go to the top-level notes; a training checkpoint's extras to its side."""
        sd = ck.llama_like(2, layers=1)
        torch.save({"model": {f"module.{n}": t for n, t in sd.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
        code, out, _ = run(capsys, tmp_path / "ckpt.pt", ck.write_safetensors(tmp_path / "m.safetensors", sd), "--json")
        assert code == 0
        doc = json.loads(out)
        check_document(doc)
        assert doc["notes"] == [f"names mapped: A: removed wrapper 'module.' ({len(sd)} tensors)"]
        assert doc["a"]["extras"] == ["epoch: int 3"]
        assert any("weights found under 'model'" in n for n in doc["a"]["notes"])


def test_console_script(pair, tmp_path):
    """The installed `weightscope` script: JSON on stdout and exit 1 for a change; exit 2 and one
    stderr line, no traceback, for an unreadable input."""
    script = shutil.which("weightscope", path=os.path.dirname(sys.executable)) or shutil.which("weightscope")
    assert script, "the console script is installed (pip install -e .)"
    _, base, _, tuned = pair
    done = subprocess.run([script, "diff", str(base), str(tuned), "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    check_document(json.loads(done.stdout))

    # protocol 5 also makes torch warn, which must not reach stderr as more lines
    (tmp_path / "junk.bin").write_bytes(pickle.dumps({"w": os.system}, protocol=5))
    done = subprocess.run([script, "diff", str(base), str(tmp_path / "junk.bin")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "junk.bin" in done.stderr and "refused to unpickle" in done.stderr


class TestFailuresSpeak:
    """Exit 1 means differences or failed checks, nothing else: anything that goes wrong is exit 2
    with one line on stderr (the traceback only with --debug)."""

    def test_a_failed_scan_is_exit_2_with_one_line(self, capsys, pair, monkeypatch):
        monkeypatch.setenv("WEIGHTSCOPE_FAULT", "scan")
        _, base, same, _ = pair
        code, _, err = run(capsys, base, same, "--no-cache")
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line.startswith("weightscope: scan failed: RuntimeError: injected fault in scan (")

    def test_a_failure_to_open_is_exit_2_with_one_line(self, capsys, pair, monkeypatch):
        monkeypatch.setenv("WEIGHTSCOPE_FAULT", "open")
        _, base, same, _ = pair
        code, out, err = run(capsys, base, same)
        assert code == 2 and out == ""
        assert err.startswith("weightscope: RuntimeError: injected fault in open (") and err.count("\n") == 1

    def test_a_bug_here_is_exit_2_not_differences(self, capsys, pair, monkeypatch):
        import weightscope.report.diff as report

        def broken(*args, **kwargs):
            raise KeyError("a bug")

        monkeypatch.setattr(report, "text_lines", broken)
        _, base, _, tuned = pair
        code, out, err = run(capsys, base, tuned)
        assert code == 2 and out.startswith("verdict: ") and "status" not in out  # the verdict came before the table
        assert err == "weightscope: unexpected error: KeyError: 'a bug' (--debug shows where)\n"
        with pytest.raises(KeyError):
            run(capsys, base, tuned, "--debug")

    def test_the_engine_dying_is_exit_2(self, capsys, pair, monkeypatch):
        """The engine's process killed mid-run (out of memory, say): said, exit 2."""
        from weightscope.engine import client

        start = client.Engine.__init__

        def killed(self, *args, **kwargs):
            start(self, *args, **kwargs)
            self.process.kill()

        monkeypatch.setattr(client.Engine, "__init__", killed)
        _, base, _, tuned = pair
        code, out, err = run(capsys, base, tuned)
        assert code == 2 and out == ""
        assert err.startswith("weightscope: the engine process stopped unexpectedly (signal 9)")


def test_one_file_on_both_sides_is_identical_without_reading_it(capsys, ck, tmp_path):
    """The same file twice, or two paths to it: identical at once, with a note, and no statistics."""
    path = ck.write_safetensors(tmp_path / "m.safetensors", ck.llama_like(0))
    os.symlink(path, tmp_path / "link.safetensors")
    for other in (path, tmp_path / "link.safetensors"):
        code, out, _ = run(capsys, path, other, "--json")
        doc = json.loads(out)
        assert code == 0 and {t["status"] for t in doc["tensors"]} == {"identical"}
        assert all(t["a"] is None and t["diff"] is None for t in doc["tensors"])
        assert any("same file on both sides" in n for n in doc["notes"])


# Issue 17: every listing of pairs is in the app tree's natural order.
NATURAL = [f"h.{i}.{part}" for i in (0, 1, 2, 10) for part in ("attn.weight", "ln_1.bias")]


@pytest.fixture
def numbered(ck, tmp_path):
    """GPT-2-like names h.0 … h.10, the biases half precision: safetensors stores them by dtype,
    then by name as text (h.10 before h.2), so the file's own order is far from natural."""
    gen = torch.Generator().manual_seed(0)
    a = {name: torch.randn(4, generator=gen).to(torch.float16 if "bias" in name else torch.float32)
         for name in NATURAL}
    b = {name: t + 1 for name, t in a.items()}
    return (ck.write_safetensors(tmp_path / "a.safetensors", a), ck.write_safetensors(tmp_path / "b.safetensors", b))


def test_text_and_json_list_pairs_in_natural_order(capsys, numbered):
    code, out, _ = run(capsys, *numbered)
    assert code == 1
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("changed")]
    assert listed == NATURAL
    code, out, _ = run(capsys, *numbered, "--json")
    assert [t["name"] for t in json.loads(out)["tensors"]] == NATURAL


def test_json_in_natural_order_across_slices(capsys, ck, tmp_path, monkeypatch):
    """The document is encoded a slice at a time; the order runs on across slices."""
    import weightscope.report.diff as report

    monkeypatch.setattr(report, "TENSORS_AT_ONCE", 3)
    names = [f"layers.{i}.w" for i in range(12)]
    path = ck.write_safetensors(tmp_path / "m.safetensors", {n: torch.ones(2) for n in names})
    code, out, _ = run(capsys, path, path, "--json")
    assert code == 0 and [t["name"] for t in json.loads(out)["tensors"]] == names


def test_inspect_lists_tensors_in_natural_order(capsys, numbered):
    assert main(["inspect", str(numbered[0])]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[1] for line in out.splitlines() if line.startswith(("float32", "float16"))]
    assert listed == NATURAL
    assert out.rstrip().endswith(f"summary: {len(NATURAL)} tensors, 0 with NaN/Inf, 0 unreadable")
    assert main(["inspect", str(numbered[0]), "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)["tensors"]] == NATURAL


def test_counts_agree_with_their_nouns(capsys, ck, tmp_path):
    """One file, one tensor, one parameter: singular; the header and inspect's summary alike."""
    path = ck.write_safetensors(tmp_path / "one.safetensors", {"w": torch.ones(1)})
    _, out, _ = run(capsys, path, path)
    assert "safetensors, 1 file, 1 tensor, 1 parameter, 4 B" in out
    main(["inspect", str(path)])
    assert "summary: 1 tensor, 0 with NaN/Inf" in capsys.readouterr().out
