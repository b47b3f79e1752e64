"""The on-disk result cache: a second scan answers from it, any change to a file or to the
options misses, `--no-cache` neither reads nor writes, a damaged entry reads as a miss, the
least recently used entries go beyond the size cap, and what is derived from the results
(LoRA notes) is the same whoever wrote the entry."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weightscope.cli import main
from weightscope.compare import cache
from weightscope.compare import catalog as cat
from weightscope.compare.align import align
from weightscope.compare.results import STATUSES, ResultTable
from weightscope.compare.scan import ScanOptions, scan_catalog
from weightscope.engine import protocol as msg
from weightscope.engine.client import Engine
from weightscope.sources.discover import open_checkpoint


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """The cache directory, under tmp_path instead of the real home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "weightscope" / "scans"


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


def scanned(path_a: str, path_b: str, use_cache: bool = True, **options) -> tuple[ResultTable, bool]:
    """What the engine found, and whether it answered from the cache."""
    with Engine(msg.Job(path_a, path_b, options=ScanOptions(**options), use_cache=use_cache), helpers=0) as engine:
        opened = engine.recv()
        assert isinstance(opened, msg.Opened), opened
        engine.send(msg.Scan())
        table, cached = ResultTable(len(opened.catalog)), set()
        while not isinstance(message := engine.recv(), msg.ScanDone):
            if isinstance(message, msg.LoopsLoaded):
                continue
            assert isinstance(message, msg.Results), message
            table.add(message.batch)
            cached.add(message.cached)
            engine.send(msg.Ack(message.number))
        table.histograms.update(message.histograms)
        table.resized.update(message.resized)
    assert len(cached) <= 1
    table.names = opened.catalog.names  # (for the tests' own reading)
    return table, cached == {True}


def statuses(table: ResultTable) -> dict[str, str]:
    return {name: STATUSES[s] for name, s in zip(table.names, table.status)}


def same(x: ResultTable, y: ResultTable) -> bool:
    return (np.array_equal(x.status, y.status) and np.array_equal(x.values, y.values, equal_nan=True)
            and x.errors == y.errors and x.notes == y.notes and x.histograms == y.histograms)


def entry(cache_home):
    (found,) = cache_home.glob("*.npz")
    return found


class TestHitsAndMisses:
    def test_second_scan_answers_from_the_cache(self, files, cache_home):
        first, cached = scanned(*files)
        assert not cached and entry(cache_home)
        second, cached = scanned(*files)
        assert cached and same(first, second)

    def test_histograms_come_back_from_the_cache(self, files):
        first, _ = scanned(*files, histograms=True)
        second, cached = scanned(*files, histograms=True)
        assert cached and same(first, second) and first.histograms[first.names.index("w")]["a"].counts

    def test_resized_pairs_come_back_from_the_cache(self, tmp_path):
        """A resized pair's common part and added rows are stored with the rest, and read back the same."""
        from weightscope.compare import overlap

        old = randn(3, 12, 4)
        path_a = write(tmp_path / "ra.safetensors", {"embed": old, "w": randn(4, 2, 2)})
        path_b = write(tmp_path / "rb.safetensors", {"embed": torch.cat([old, torch.zeros(3, 4)]), "w": randn(4, 2, 2)})
        first, cached = scanned(path_a, path_b)
        assert not cached and list(first.resized) == [first.names.index("embed")]
        second, cached = scanned(path_a, path_b)
        assert cached and same(first, second)
        (found,), (again,) = first.resized.values(), second.resized.values()
        assert found.added.init == "zeros" and found.status == "identical"
        assert json.dumps(overlap.stored(found)) == json.dumps(overlap.stored(again))
        assert again.added == found.added and np.array_equal(again.values, found.values, equal_nan=True)

    def test_rewritten_file_misses(self, files):
        path_a, path_b = files
        scanned(path_a, path_b)
        write(path_b, {"embed": randn(0, 16, 4) * 2, "w": randn(1, 8, 8), "nan": torch.tensor([1.0, 2.0, 3.0])})
        second, cached = scanned(path_a, path_b)
        assert not cached
        assert statuses(second) == {"embed": "changed", "w": "identical", "nan": "changed"}

    def test_touched_file_misses(self, files):
        path_a, path_b = files
        first, _ = scanned(path_a, path_b)
        st = os.stat(path_a)
        os.utime(path_a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        second, cached = scanned(path_a, path_b)
        assert not cached and same(first, second)

    def test_options_are_part_of_the_key(self, files):
        scanned(*files)
        loose, cached = scanned(*files, atol=1.0)
        assert not cached and statuses(loose)["w"] == "close"
        assert not scanned(*files, rtol=1.0)[1]
        assert not scanned(*files, histograms=True)[1]
        assert scanned(*files, atol=1.0)[1]

    def test_no_cache_neither_reads_nor_writes(self, files, cache_home):
        first, _ = scanned(*files, use_cache=False)
        assert not cache_home.exists() or not list(cache_home.iterdir())
        scanned(*files)  # fills the cache
        entries = sorted(cache_home.iterdir())
        stamps = [p.stat().st_mtime_ns for p in entries]
        second, cached = scanned(*files, use_cache=False)
        assert not cached and same(first, second)
        assert sorted(cache_home.iterdir()) == entries and [p.stat().st_mtime_ns for p in entries] == stamps

    @pytest.mark.parametrize("damage", ["cut", "garbage", "empty", "other-names", "other-shape"])
    def test_any_damage_is_a_miss(self, files, cache_home, damage):
        first, _ = scanned(*files)
        path = entry(cache_home)
        data = path.read_bytes()
        if damage == "cut":
            path.write_bytes(data[:len(data) // 2])
        elif damage == "garbage":
            path.write_bytes(b"PK\x03\x04" + b"x" * 100)
        elif damage == "empty":
            path.write_bytes(b"")
        else:
            with np.load(path) as stored:
                arrays = dict(stored)
            if damage == "other-names":
                arrays["names"] = np.zeros_like(arrays["names"])
            else:
                arrays["values"] = arrays["values"][:1]
            np.savez(path, **arrays)
        second, cached = scanned(*files)
        assert not cached and same(first, second)

    def test_sharded_checkpoint_misses_when_one_shard_changes(self, ck, tmp_path):
        sd = ck.llama_like(0)
        a = ck.write_sharded_safetensors(tmp_path / "a", sd, shards=2)
        moved = dict(sd)
        moved["lm_head.weight"] = sd["lm_head.weight"] + 1
        b = ck.write_sharded_safetensors(tmp_path / "b", moved, shards=2)
        scanned(str(a), str(b))
        assert scanned(str(a), str(b))[1]
        last_shard = sorted(b.glob("*.safetensors"))[-1]
        names = [n for n, f in json.loads((b / "model.safetensors.index.json").read_text())["weight_map"].items()
                 if f == last_shard.name]
        ck.write_safetensors(last_shard, {n: moved[n] * 3 for n in names}, metadata={"format": "pt"})
        third, cached = scanned(str(a), str(b))
        assert not cached and all(statuses(third)[n] == "changed" for n in names)


class TestEviction:
    def test_least_recently_used_entries_go_beyond_the_cap(self, files, cache_home, monkeypatch, tmp_path):
        path_a, path_b = files
        scanned(path_a, path_b)
        size = entry(cache_home).stat().st_size
        monkeypatch.setenv("WEIGHTSCOPE_CACHE_MAX", str(int(2.5 * size)))
        scanned(path_a, path_b, atol=0.5)
        time.sleep(0.02)
        assert scanned(path_a, path_b)[1]  # the first entry, used again: now the most recent
        time.sleep(0.02)
        scanned(path_a, path_b, atol=0.25)  # a third entry: the least recently used (atol 0.5) goes
        assert len(list(cache_home.iterdir())) == 2
        assert scanned(path_a, path_b)[1] and scanned(path_a, path_b, atol=0.25)[1]
        assert not scanned(path_a, path_b, atol=0.5)[1]

    @pytest.mark.parametrize("text, expected", [("", cache.DEFAULT_MAX), ("500M", 5 * 10**8), ("2G", 2 * 10**9),
                                                ("1.5GB", 15 * 10**8), ("123456", 123456), ("lots", cache.DEFAULT_MAX)])
    def test_the_cap_reads_sizes_as_people_write_them(self, monkeypatch, text, expected):
        monkeypatch.setenv("WEIGHTSCOPE_CACHE_MAX", text)
        assert cache.limit() == expected


class TestWhoeverWroteIt:
    def test_lora_notes_are_the_same_from_a_fresh_scan_and_from_the_cache(self, capsys, ck, tmp_path):
        """Derived notes are worked out again on every load: never doubled, never lost."""
        from test_adapters import HIDDEN, Q0, VOCAB, factors, write_adapter

        base = ck.write_safetensors(tmp_path / "base.safetensors", ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB))
        adapter = write_adapter(ck, tmp_path / "adapter", factors(Q0, 8, HIDDEN, HIDDEN, 1))

        def document(*extra) -> dict:
            main(["diff", str(base), str(adapter), "--json", *extra])
            return json.loads(capsys.readouterr().out)

        fresh = document("--no-cache")
        first, second = document(), document()  # the second answers from what the first stored
        assert fresh == first == second
        notes = next(t for t in second["tensors"] if t["name"] == f"{Q0}.weight")["notes"]
        assert len(notes) == len(set(notes)) and any("computed: W + ΔW" in n for n in notes)
        assert sum("‖ΔW‖/‖W‖ over" in n for n in second["b"]["notes"]) == 1


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
            catalog = cat.build(ca, cb, align(ca, cb))
            options = ScanOptions(histograms=True)
            table = scan_catalog(catalog, ca, cb, options)
            key = cache.key(ca, cb, options)
            assert cache.load(key, catalog) is None
            cache.save(key, table, catalog)
            assert same(cache.load(key, catalog), table)
            assert cache.load(cache.key(ca, cb, ScanOptions()), catalog) is None
        w = table.result(catalog.names.index("w"), catalog.pair(catalog.names.index("w")))
        assert w.diff.max_abs_index is not None and isinstance(w.diff.max_abs_index, tuple)

    def test_key_follows_files_and_options(self, tmp_path):
        path = write(tmp_path / "a.safetensors", {"w": randn(8, 4)})
        with open_checkpoint(path) as a:
            base = cache.key(a, a, ScanOptions())
            assert cache.key(a, a, ScanOptions()) == base
            assert cache.key(a, a, ScanOptions(atol=0.1)) != base
            assert cache.key(a, a, ScanOptions(rtol=0.1)) != base
            assert cache.key(a, a, ScanOptions(histograms=True)) != base
            assert cache.key(a, a, ScanOptions(), single=True) != base
        with open(path, "r+b") as f:  # same size and mtime, other bytes: the edge hash tells
            st = os.stat(path)
            f.seek(st.st_size - 1)
            last = f.read(1)
            f.seek(st.st_size - 1)
            f.write(bytes([last[0] ^ 1]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        with open_checkpoint(path) as a:
            assert cache.key(a, a, ScanOptions()) != base


def test_the_cache_command_says_where_and_how_much_and_empties_it(files, cache_home, capsys, monkeypatch):
    monkeypatch.setenv("WEIGHTSCOPE_CACHE_MAX", "5G")
    assert main(["cache"]) == 0
    assert capsys.readouterr().out.startswith(f"{cache_home}: 0 entries, 0.0 MB; cap 5 GB")
    assert main(["diff", *files]) == 1
    capsys.readouterr()
    assert main(["cache"]) == 0
    assert f"{cache_home}: 1 entry, " in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out == f"removed 1 entry from {cache_home}\n"
    assert list(cache_home.iterdir()) == []
    assert scanned(*files)[1] is False  # a miss: computed again
