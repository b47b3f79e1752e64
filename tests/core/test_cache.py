"""The on-disk result cache: a second `diff` answers from it, any change to a file or to the
options misses, `--no-cache` neither reads nor writes, and a damaged entry reads as a miss."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import save_file

from weightscope.cli import main
from weightscope.compare import cache
from weightscope.compare import scan as scan_module
from weightscope.compare.align import align
from weightscope.sources.discover import open_checkpoint
from weightscope.compare.scan import ScanOptions


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """The cache directory, under tmp_path instead of the real home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "weightscope" / "scans"


@pytest.fixture
def scans(monkeypatch):
    """How many times the CLI ran a real scan (a cache hit runs none)."""
    calls = []
    real = scan_module.scan

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_module, "scan", counting)
    return calls


def randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write(path, sd) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    a = {"embed": randn(0, 16, 4), "w": randn(1, 8, 8), "nan": torch.tensor([1.0, math.nan, 3.0])}
    b = {"embed": a["embed"].clone(), "w": a["w"] + 0.01 * randn(2, 8, 8), "nan": torch.tensor([1.0, 2.0, 3.0])}
    return write(tmp_path / "a.safetensors", a), write(tmp_path / "b.safetensors", b)


def diff(capsys, *argv) -> dict:
    code = main(["diff", *argv, "--json"])
    assert code == 1
    return json.loads(capsys.readouterr().out)


class TestCli:
    def test_second_run_answers_from_the_cache(self, capsys, files, scans, cache_home):
        first = diff(capsys, *files)
        assert len(scans) == 1 and len(list(cache_home.glob("*.json"))) == 1
        second = diff(capsys, *files)
        assert len(scans) == 1  # no scan the second time
        assert second == first

    def test_cache_answers_without_scanning_at_all(self, capsys, files, monkeypatch):
        first = diff(capsys, *files)

        def fail(*args, **kwargs):
            raise AssertionError("scanned although the cache holds the answer")

        monkeypatch.setattr(scan_module, "scan", fail)
        monkeypatch.setattr(scan_module.stats, "pair_stats", fail)
        assert diff(capsys, *files) == first

    def test_histograms_come_back_from_the_cache(self, capsys, files, scans):
        first = diff(capsys, *files, "--histograms")
        assert diff(capsys, *files, "--histograms") == first and len(scans) == 1
        assert first["tensors"][1]["histograms"]["a"]["counts"]

    def test_rewritten_file_misses(self, capsys, files, scans, tmp_path):
        path_a, path_b = files
        first = diff(capsys, path_a, path_b)
        write(path_b, {"embed": randn(0, 16, 4) * 2, "w": randn(1, 8, 8),
                       "nan": torch.tensor([1.0, 2.0, 3.0])})
        second = diff(capsys, path_a, path_b)
        assert len(scans) == 2
        statuses = {t["name"]: t["status"] for t in second["tensors"]}
        assert statuses == {"embed": "changed", "w": "identical", "nan": "changed"}
        assert statuses != {t["name"]: t["status"] for t in first["tensors"]}

    def test_touched_file_misses(self, capsys, files, scans):
        path_a, path_b = files
        first = diff(capsys, path_a, path_b)
        st = os.stat(path_a)
        os.utime(path_a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert diff(capsys, path_a, path_b) == first
        assert len(scans) == 2

    def test_options_are_part_of_the_key(self, capsys, files, scans):
        diff(capsys, *files)
        loose = diff(capsys, *files, "--atol", "1")
        assert len(scans) == 2
        assert {t["name"]: t["status"] for t in loose["tensors"]}["w"] == "close"
        diff(capsys, *files, "--rtol", "1")
        diff(capsys, *files, "--histograms")
        assert len(scans) == 4
        diff(capsys, *files, "--atol", "1")
        assert len(scans) == 4

    def test_no_cache_neither_reads_nor_writes(self, capsys, files, scans, cache_home):
        first = diff(capsys, *files, "--no-cache")
        assert not cache_home.exists() or not list(cache_home.iterdir())
        diff(capsys, *files)  # fills the cache
        entries = sorted(cache_home.iterdir())
        stamps = [p.stat().st_mtime_ns for p in entries]
        assert diff(capsys, *files, "--no-cache") == first
        assert len(scans) == 3  # read nothing: scanned again
        assert sorted(cache_home.iterdir()) == entries and [p.stat().st_mtime_ns for p in entries] == stamps

    @pytest.mark.parametrize("cut", ["mid-line", "between-lines"])
    def test_an_entry_cut_short_is_a_miss(self, capsys, files, scans, cache_home, cut):
        first = diff(capsys, *files)
        (entry,) = cache_home.glob("*.json")
        lines = entry.read_text().splitlines(keepends=True)
        assert len(lines) > 1 and all(json.loads(line)["name"] for line in lines)  # a result a line
        entry.write_text(lines[0] + (lines[1][:20] if cut == "mid-line" else ""))
        assert diff(capsys, *files) == first
        assert len(scans) == 2
        assert len(entry.read_text().splitlines()) == len(lines)  # rewritten whole

    @pytest.mark.parametrize("text", [
        "[]", '{"results": 5}', '{"results": ["w"]}', '{"results": [{"name": "w"}]}',
        '{"results": [{"name": "%s", "status": "identical", "error": null, "notes": [], "a": null, "b": null, '
        '"diff": null, "histograms": null}]}',
        '{"results": [{"name": "%s", "status": "identical", "error": null, "notes": [], "a": {"min": 1}, "b": null, '
        '"diff": null, "histograms": {}}]}',
    ], ids=["list", "number", "string", "missing-keys", "null-histograms", "bad-stats"])
    def test_any_damage_is_a_miss(self, capsys, files, scans, cache_home, text):
        first = diff(capsys, *files)
        (entry,) = cache_home.glob("*.json")
        entry.write_text(text.replace("%s", "embed"))
        assert diff(capsys, *files) == first and len(scans) == 2

    def test_sharded_checkpoint_misses_when_one_shard_changes(self, capsys, ck, tmp_path, scans):
        sd = ck.llama_like(0)
        a = ck.write_sharded_safetensors(tmp_path / "a", sd, shards=2)
        moved = dict(sd)
        moved["lm_head.weight"] = sd["lm_head.weight"] + 1
        b = ck.write_sharded_safetensors(tmp_path / "b", moved, shards=2)
        diff(capsys, str(a), str(b))
        diff(capsys, str(a), str(b))
        assert len(scans) == 1
        last_shard = sorted(b.glob("*.safetensors"))[-1]
        names = [n for n, f in json.loads((b / "model.safetensors.index.json").read_text())["weight_map"].items()
                 if f == last_shard.name]
        ck.write_safetensors(last_shard, {n: moved[n] * 3 for n in names}, metadata={"format": "pt"})
        third = diff(capsys, str(a), str(b))
        assert len(scans) == 2
        assert all(t["status"] == "changed" for t in third["tensors"] if t["name"] in names)


class TestRoundTrip:
    def test_results_survive_the_cache(self, tmp_path):
        """Every figure, index, reason and histogram comes back as it was computed."""
        a = {"w": randn(3, 5, 7), "zero": torch.zeros(4), "nan": torch.full((3,), math.nan), "s": torch.tensor(1.0),
             "e": torch.zeros(0, 2), "only_a": randn(4, 2), "shape": randn(5, 3)}
        b = {"w": a["w"] * 1.5, "zero": torch.ones(4), "nan": torch.full((3,), math.nan), "s": torch.tensor(2.0),
             "e": torch.zeros(0, 2), "only_b": randn(6, 2), "shape": randn(7, 4)}
        b["w"][1, 2] = math.inf
        with open_checkpoint(write(tmp_path / "a.safetensors", a)) as ca, \
                open_checkpoint(write(tmp_path / "b.safetensors", b)) as cb:
            alignment = align(ca, cb)
            options = ScanOptions(histograms=True)
            results = scan_module.scan(alignment, ca, cb, options)
            key = cache.key(ca, cb, options)
            assert cache.load(key, alignment) is None
            cache.save(key, results)
            assert cache.load(key, alignment) == results
            assert cache.load(cache.key(ca, cb, ScanOptions()), alignment) is None
        w = next(r for r in results if r.pair.name == "w")
        assert w.diff.max_abs_index is not None and isinstance(w.diff.max_abs_index, tuple)
        assert next(r for r in results if r.pair.name == "zero").diff.undefined

    def test_key_follows_files_and_options(self, tmp_path):
        path = write(tmp_path / "a.safetensors", {"w": randn(8, 4)})
        with open_checkpoint(path) as a:
            base = cache.key(a, a, ScanOptions())
            assert cache.key(a, a, ScanOptions()) == base
            assert cache.key(a, a, ScanOptions(atol=0.1)) != base
            assert cache.key(a, a, ScanOptions(rtol=0.1)) != base
            assert cache.key(a, a, ScanOptions(histograms=True)) != base
        with open(path, "r+b") as f:  # same size and mtime, other bytes: the edge hash tells
            st = os.stat(path)
            f.seek(st.st_size - 1)
            last = f.read(1)
            f.seek(st.st_size - 1)
            f.write(bytes([last[0] ^ 1]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        with open_checkpoint(path) as a:
            assert cache.key(a, a, ScanOptions()) != base
