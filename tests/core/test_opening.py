"""Opening a pair fast: well-formed safetensors files held as columns (`TensorTable`), the
catalog built from those columns, and the engine opening B in a worker process while it opens
A. Each fast way must give exactly what the general way gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from weightscope.analysis import hierarchy
from weightscope.compare import catalog as cat
from weightscope.compare.align import SameNames, align
from weightscope.engine import protocol as msg
from weightscope.engine.client import Engine
from weightscope.sources.checkpoint import Checkpoint, TensorTable

SIDE_FIELDS = ("name", "dtype", "shape", "file", "start", "end", "numel", "nbytes", "plain", "present", "quant", "error",
               "tied_to", "origin", "stored_name")


def running(pid: int) -> bool:
    """Whether process `pid` runs (not ended, nor ended and waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def as_objects(checkpoint: Checkpoint) -> Checkpoint:
    """The same checkpoint with its tensors as a dict of `TensorInfo`s: the general way."""
    return Checkpoint(checkpoint.path, checkpoint.format, checkpoint.files, dict(checkpoint.tensors.items()),
                      checkpoint.notes, checkpoint.extras, checkpoint.metadata, checkpoint.sources)


def assert_same_catalog(x: cat.Catalog, y: cat.Catalog) -> None:
    assert x.names == y.names and x.files == y.files and x.notes == y.notes and x.pair_notes == y.pair_notes
    assert np.array_equal(x.known, y.known) and np.array_equal(x.factor, y.factor)
    for side in ("a", "b"):
        for field in SIDE_FIELDS:
            got, expected = getattr(getattr(x, side), field), getattr(getattr(y, side), field)
            assert np.array_equal(got, expected) if isinstance(got, np.ndarray) else got == expected, (side, field)
    assert x.summary_a == y.summary_a and x.summary_b == y.summary_b


@pytest.fixture
def pair(ck, tmp_path):
    """A sharded Llama-like pair: B fine-tuned, one tensor cast to bfloat16, the vocabulary grown,
    and its shards split differently (its names in another order)."""
    sd_a = ck.llama_like(0, layers=3)
    sd_b = {name: value + 0.01 for name, value in ck.llama_like(0, layers=3).items()}
    sd_b["model.layers.1.mlp.up_proj.weight"] = sd_b["model.layers.1.mlp.up_proj.weight"].bfloat16()
    sd_b["lm_head.weight"] = torch.randn(40, 8)
    a = ck.write_sharded_safetensors(tmp_path / "a", sd_a, shards=3)
    b = ck.write_sharded_safetensors(tmp_path / "b", dict(reversed(sd_b.items())), shards=2)
    return a, b


class TestTables:
    def test_well_formed_shards_open_as_one_table(self, pair, opened, monkeypatch):
        """What the columns give, name by name, is what the careful way reads."""
        from weightscope.sources.formats import safetensors as st

        fast = opened(pair[0])
        assert isinstance(fast.tensors, TensorTable)
        with monkeypatch.context() as m:
            m.setattr(st, "read_well_formed", lambda *args: None)
            careful = opened(pair[0])
        assert not isinstance(careful.tensors, TensorTable)
        assert list(fast.tensors) == list(careful.tensors)
        assert dict(fast.tensors.items()) == dict(careful.tensors) == {n: fast.tensors[n] for n in fast.tensors}
        assert fast.notes == careful.notes and fast.parameters == careful.parameters

    def test_catalog_from_columns_is_the_catalog_from_objects(self, pair, opened):
        a, b = opened(pair[0]), opened(pair[1])
        alignment = align(a, b)
        assert isinstance(alignment.pairs, SameNames)  # (the same names, B's in another order)
        fast = cat.build(a, b, alignment)
        general_a, general_b = as_objects(a), as_objects(b)
        assert_same_catalog(fast, cat.build(general_a, general_b, align(general_a, general_b)))
        assert cat.KNOWN[fast.known[fast.index("lm_head.weight")]] == "shape_mismatch"
        assert cat.KNOWN[fast.known[fast.index("model.layers.1.mlp.up_proj.weight")]] == "dtype"
        assert list(alignment.pairs) == [alignment.pairs[i] for i in range(len(alignment.pairs))]

    def test_a_name_in_two_files_is_read_the_general_way(self, ck, tmp_path, opened):
        """Anything odd (here a name in two files, with no index to say which) leaves the columns
        for the general way, which says what is odd."""
        directory = tmp_path / "m"
        directory.mkdir()
        ck.write_safetensors(directory / "one.safetensors", {"w": torch.ones(2), "x": torch.zeros(3)})
        ck.write_safetensors(directory / "two.safetensors", {"w": torch.full((2,), 2.0)})
        checkpoint = opened(directory)
        assert not isinstance(checkpoint.tensors, TensorTable)
        assert any("w also in" in note for note in checkpoint.notes)
        assert torch.equal(checkpoint.load("w"), torch.ones(2))


def opened_by_engine(path_a: str, path_b: str, helpers: int) -> msg.Opened | msg.Failed:
    with Engine(msg.Job(path_a, path_b, tree=True, use_cache=False), helpers=helpers) as engine:
        return engine.recv()


@pytest.fixture
def wide(ck, tmp_path):
    """A pair of 10,000 small tensors: headers of over 1 MB, which a worker opens (one of B's
    shaped otherwise: not the same header bytes as A's)."""
    names = [f"model.layers.{i // 100}.mlp.experts.{i % 100}.down_proj.weight" for i in range(10_000)]
    a = ck.write_safetensors(tmp_path / "a.safetensors", {n: torch.full((2,), float(i)) for i, n in enumerate(names)})
    b = ck.write_safetensors(tmp_path / "b.safetensors",
                             {n: torch.full((2 + (i == 0),), float(i % 7)) for i, n in enumerate(names)})
    return a, b


@pytest.fixture
def tuned(ck, tmp_path, wide):
    """A's tensors with other values, written as a fine-tune is: its header the very bytes of A's."""
    from safetensors import safe_open

    with safe_open(wide[0], "pt") as f:
        values = {n: f.get_tensor(n) + 1 for n in f.keys()}
    return ck.write_safetensors(tmp_path / "tuned.safetensors", values)


class TestOpeningAtOnce:
    """With a worker process, the engine opens a B of large headers there while it opens A and
    builds A's tree; a small B, or one whose headers are the very bytes of A's, opens at once,
    here."""

    def test_large_headers_open_elsewhere_small_or_same_ones_here(self, wide, tuned, pair):
        from weightscope.engine.opening import header_ends, opens_elsewhere

        assert opens_elsewhere(msg.Job(str(wide[0]), str(wide[1]))) == str(wide[1])
        assert header_ends(str(tuned)) == header_ends(str(wide[0]))
        assert opens_elsewhere(msg.Job(str(wide[0]), str(tuned))) is None
        assert opens_elsewhere(msg.Job(str(pair[0]), str(pair[1]))) is None

    def test_headers_of_the_same_bytes_are_parsed_once(self, wide, tuned, opened):
        """B's header, the very bytes of A's, is not parsed again; B's tensors are still read
        from B's file."""
        from weightscope.sources.formats import safetensors as st

        st.well_formed_columns.cache_clear()
        a, b = opened(wide[0]), opened(tuned)
        assert st.well_formed_columns.cache_info().hits == 1
        assert set(b.tensors.file) == {str(tuned)} and list(b.tensors) == list(a.tensors)
        name = a.tensors.names[123]
        assert torch.equal(b.load(name), a.load(name) + 1)

    def test_the_same_catalog_and_tree_either_way(self, wide):
        at_once, alone = (opened_by_engine(str(wide[0]), str(wide[1]), helpers) for helpers in (1, 0))
        assert isinstance(at_once, msg.Opened) and isinstance(alone, msg.Opened)
        assert_same_catalog(at_once.catalog, alone.catalog)
        for tree in (at_once.tree, alone.tree):
            expected = hierarchy.build(at_once.catalog)
            assert tree.parts == expected.parts and np.array_equal(tree.order, expected.order)

    def test_names_sent_once_are_the_catalogs_again(self, wide, tuned):
        """A's names, sent for the tree, are left out of the catalog that follows when they are
        the pairs' names; the client puts them back, in the catalog and in each side."""
        opened = opened_by_engine(str(wide[0]), str(tuned), helpers=1)
        assert opened.names_sent
        catalog = opened.catalog
        assert catalog.names[:2] == ("model.layers.0.mlp.experts.0.down_proj.weight",
                                     "model.layers.0.mlp.experts.1.down_proj.weight") and len(catalog) == 10_000
        assert catalog.a.name is catalog.names and catalog.b.name is catalog.names
        assert catalog.index(catalog.names[123]) == 123 and catalog.pair(123).b.file == str(tuned)
        from weightscope.engine.opening import open_job

        assert_same_catalog(catalog, open_job(msg.Job(str(wide[0]), str(tuned)))[3])

    def test_a_tree_of_other_names_is_not_taken_for_the_pairs(self, ck, tmp_path, wide):
        """B has names A lacks: the pairs are more than A's names, and the tree shows them all."""
        names = [f"model.layers.{i // 100}.mlp.experts.{i % 100}.down_proj.weight" for i in range(10_000)]
        b = ck.write_safetensors(tmp_path / "more.safetensors", {n: torch.ones(2) for n in names + ["x.w"]})
        opened = opened_by_engine(str(wide[0]), str(b), helpers=1)
        assert not opened.names_sent
        assert opened.catalog.names[-1] == "x.w" and len(opened.catalog) == 10_001
        tree = hierarchy.build(opened.catalog)
        assert opened.tree.parts == tree.parts and np.array_equal(opened.tree.order, tree.order)

    def test_an_adapter_as_b_is_applied_over_a(self, ck, tmp_path):
        """B's weights opened elsewhere are an adapter's: they are applied over A as always."""
        sd = ck.llama_like(0)
        base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        module = "base_model.model.model.layers.0.self_attn.q_proj"
        ck.write_safetensors(adapter / "adapter_model.safetensors",
                             {f"{module}.lora_A.weight": torch.ones(2, 8), f"{module}.lora_B.weight": torch.ones(8, 2)})
        (adapter / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
        at_once, alone = (opened_by_engine(str(base), str(adapter), helpers) for helpers in (1, 0))
        assert_same_catalog(at_once.catalog, alone.catalog)
        q = at_once.catalog.index("model.layers.0.self_attn.q_proj.weight")
        assert at_once.catalog.b.origin[q].startswith("W + ΔW")

    def test_a_damaged_b_is_said_as_when_opened_here(self, ck, tmp_path):
        a = ck.write_safetensors(tmp_path / "a.safetensors", {"w": torch.ones(2)})
        b = tmp_path / "b.safetensors"
        b.write_bytes((2 << 20).to_bytes(8, "little") + b"{not json at all}" + b" " * (2 << 20))  # (large: elsewhere)
        at_once, alone = (opened_by_engine(str(a), str(b), helpers) for helpers in (1, 0))
        assert isinstance(at_once, msg.Failed) and at_once.fatal
        assert at_once.message == alone.message and str(b) in at_once.message

    def test_asking_a_closed_engine_is_no_error(self, pair):
        """An app's timer may still ask as the app exits, after its engine is closed: nothing
        happens (an engine that ended on its own is said by `recv`)."""
        engine = Engine(msg.Job(str(pair[0]), str(pair[1])))
        engine.close()
        assert engine.ask("detail", 0, True) == 1
        engine.send(msg.Scan())
        assert isinstance(engine.recv(), msg.Failed)

    def test_a_worker_ends_with_its_engine_even_while_its_loops_compile(self, pair, tmp_path):
        """A worker whose engine has gone ends within a second, even while it compiles its loops
        (a first start, nothing compiled yet: half a minute) and reads no pipe."""
        engine = (
            "import os, sys, time\n"
            "from weightscope.engine import protocol as msg\n"
            "from weightscope.engine.client import start\n"
            "process, conn = start('weightscope.engine.worker', True, str(os.getpid()))\n"
            f"conn.send((msg.Job({str(pair[0])!r}, {str(pair[1])!r}), None))\n"
            "print(process.pid, flush=True)\n"
            "time.sleep(float(sys.argv[1]))\n"
            "os._exit(0)\n")  # gone without a word, its pipe left open in no one
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))  # an empty cache: the loops compile
        for lifetime in ("0", "3"):  # gone before the worker has started, or while it compiles
            worker = int(subprocess.run([sys.executable, "-c", engine, lifetime], capture_output=True, text=True,
                                        env=env, check=True, timeout=60).stdout)
            deadline = time.monotonic() + 5
            while running(worker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not running(worker), lifetime

    def test_a_worker_sends_b_opened(self, pair, opened):
        """What a worker sends reads back in any process (its classes pickle by module name, not
        as `__main__`'s), and B's weights come as they open here."""
        from weightscope.engine.client import start

        process, conn = start("weightscope.engine.worker", True, str(os.getpid()))
        try:
            conn.send((msg.Job(str(pair[0]), str(pair[1])), str(pair[1])))
            done = conn.recv()
        finally:
            conn.close()
            process.wait(10)
        assert done.kind == "open" and done.error is None
        assert dict(done.content.tensors.items()) == dict(opened(pair[1]).tensors.items())
