"""Untrusted input (docs/reading-untrusted-files.md): every bad file gets a one-line error
naming it, never runs code, never hangs, and damage to one tensor or shard leaves the rest
readable."""

import builtins
import contextlib
import json
import os
import pickle
import signal
import struct
import zipfile

import pytest
import torch

from weightscope.sources.checkpoint import TensorUnreadable
from weightscope.sources.errors import CheckpointError
from weightscope.sources.formats.safetensors import MAX_HEADER
from weightscope.report.diff import exit_status


@contextlib.contextmanager
def no_hang(seconds: float = 10):
    """Fail instead of blocking forever (a FIFO's open() waits for a writer)."""
    def alarm(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(opened, path, match: str) -> str:
    """Opening `path` fails with a one-line CheckpointError that names the file and matches `match`."""
    with no_hang(), pytest.raises(CheckpointError, match=match) as exc:
        opened(path)
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert os.path.basename(str(path)) in message
    return message


def one_line_naming(error: str, path) -> None:
    assert error is not None and "\n" not in error
    assert os.path.basename(str(path)) in error


# --- pickles that would run code ------------------------------------------------------------

class RunsShell:
    """Unpickling this runs `touch SENTINEL` through os.system."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


class WritesFile:
    """Unpickling this writes SENTINEL through builtins.exec."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').write('pwned')",)


PAYLOADS = {"os.system": RunsShell, "builtins.exec": WritesFile}
CONTAINERS = {
    "torch zip": lambda obj, path: torch.save(obj, path),
    "torch legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "raw pickle 2": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    "raw pickle 5": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=5)),
}


class TestPickles:
    @pytest.mark.parametrize("container", list(CONTAINERS))
    @pytest.mark.parametrize("payload", list(PAYLOADS))
    def test_code_never_runs(self, tmp_path, opened, payload, container):
        """A pickle whose loading would run code is refused, and the code never runs."""
        sentinel = tmp_path / "SENTINEL"
        path = tmp_path / "pytorch_model.bin"
        CONTAINERS[container]({"w": torch.ones(2), "evil": PAYLOADS[payload](sentinel)}, path)
        message = refused(opened, path, "refused to unpickle")
        assert not sentinel.exists()
        assert "GLOBAL" in message or "Unsupported" in message, message

    def test_sanity_the_payload_works(self, tmp_path):
        """The payload does run when unpickled without protection (so the test above means something)."""
        sentinel = tmp_path / "SENTINEL"
        pickle.loads(pickle.dumps(RunsShell(sentinel)))
        assert sentinel.exists()

    def test_evil_shard_spoils_only_its_tensors(self, ck, tmp_path, diff):
        """A .bin shard carrying a payload is an error for its tensors; the other shard reads; nothing runs."""
        sd = ck.llama_like(0)
        directory = ck.write_sharded_bin(tmp_path / "ckpt", sd)
        first, second = ck.split(list(sd), 2)
        sentinel = tmp_path / "SENTINEL"
        torch.save({**{n: sd[n] for n in second}, "evil": RunsShell(sentinel)},
                   directory / "pytorch_model-00002-of-00002.bin")
        d = diff(directory, ck.write_safetensors(tmp_path / "good.safetensors", sd))
        assert not sentinel.exists()
        assert {n for n, s in d.statuses.items() if s == "error"} == set(second)
        assert {d.statuses[n] for n in first} == {"identical"}
        for n in second:
            one_line_naming(d.result(n).error, "pytorch_model-00002-of-00002.bin")
        assert any("refused to unpickle" in n for n in d.a.notes)


# --- safetensors headers ---------------------------------------------------------------------

def write(tmp_path, ck, header, data=b"", length=None, name="model.safetensors"):
    path = tmp_path / name
    path.write_bytes(ck.safetensors_bytes(header, data, length))
    return path


THREE = {"a": torch.arange(4.0), "b": torch.arange(4.0) + 10, "c": torch.arange(4.0) + 20}


class TestSafetensorsFile:
    @pytest.mark.parametrize("length", [10_000, 2 ** 63 + 5, 2 ** 64 - 1])
    def test_header_length_beyond_file(self, ck, tmp_path, opened, length):
        """A header length past the end of the file is refused before anything is read or allocated."""
        header, data = ck.packed(THREE)
        refused(opened, write(tmp_path, ck, header, data, length=length), "exceeds the file size")

    def test_header_length_over_the_cap(self, tmp_path, opened):
        """A header length within a (sparse) file but over the cap is refused without reading it."""
        path = tmp_path / "model.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", MAX_HEADER + 1) + b"{")
            f.truncate(MAX_HEADER + 64)
        refused(opened, path, "limit")

    @pytest.mark.parametrize("text, why", [
        pytest.param('{"a": {"dtype": "F32", ', "invalid JSON header", id="cut short"),
        pytest.param('{"a": ' + "[" * 100_000, "invalid JSON header", id="nested too deep"),
        pytest.param(b'{"a": "\xff\xfe"}', "invalid JSON header", id="not utf-8"),
        pytest.param("[1, 2, 3]", "unrecognised first bytes", id="array"),  # told by its first bytes
        pytest.param('{"a": 1, "a": 2}', "duplicate key 'a'", id="duplicate key"),
        pytest.param('{"__metadata__": {"k": "1", "k": "2"}}', "duplicate key 'k'", id="duplicate metadata key"),
    ])
    def test_bad_json(self, ck, tmp_path, opened, text, why):
        """Unparseable, non-object or repeated-key headers are refused with one line."""
        refused(opened, write(tmp_path, ck, text, b"\0" * 16), why)

    def test_duplicate_tensor_names(self, ck, tmp_path, opened):
        """A tensor named twice in the header (the JSON parser would silently keep one) is refused."""
        entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
        refused(opened, write(tmp_path, ck, f'{{"w": {entry}, "w": {entry}}}', b"\0" * 4), "duplicate key 'w'")

    @pytest.mark.parametrize("field, value, why", [
        ("data_offsets", [0, 10_000], "data ends at byte"),
        ("data_offsets", [2 ** 70, 2 ** 70 + 16], "data ends at byte"),
        ("data_offsets", [8, 4], "invalid data_offsets"),
        ("data_offsets", [-16, 0], "invalid data_offsets"),
        ("data_offsets", [0, 12], "12 bytes of data for float32 [4], which needs 16"),
        ("data_offsets", [0], "two integers"),
        ("data_offsets", [False, True], "two integers"),
        ("data_offsets", [0.0, 16.0], "two integers"),
        ("shape", [4, 1, 2], "which needs 32"),
        ("shape", [True, 4], "invalid shape"),
        ("shape", [-4], "invalid shape"),
        ("shape", [4.0], "invalid shape"),
        ("shape", "4", "invalid shape"),
        ("shape", [1] * 65, "invalid shape"),
        ("shape", [2 ** 40, 2 ** 40], "which needs"),
        ("dtype", "F128", "unsupported dtype"),
        ("dtype", ["F32"], "unsupported dtype"),
    ])
    def test_bad_entry_spoils_only_its_tensor(self, ck, tmp_path, opened, field, value, why):
        """A bad shape, dtype or offset marks that tensor in error; the others read their values."""
        header, data = ck.packed(THREE)
        header["b"][field] = value
        c = opened(write(tmp_path, ck, header, data))
        assert why in c.tensors["b"].error
        one_line_naming(c.tensors["b"].error, "model.safetensors")
        with pytest.raises(TensorUnreadable):
            c.load("b")
        assert torch.equal(c.load("a"), THREE["a"]) and torch.equal(c.load("c"), THREE["c"])

    def test_entry_not_an_object(self, ck, tmp_path, opened):
        """A header entry that is not an object is an error for that name only."""
        header, data = ck.packed(THREE)
        header["b"] = [1, 2]
        c = opened(write(tmp_path, ck, header, data))
        assert "not an object" in c.tensors["b"].error
        assert torch.equal(c.load("c"), THREE["c"])

    def test_overlapping_spans(self, ck, tmp_path, opened):
        """Tensors whose bytes overlap are both in error; tensors beside them stay readable."""
        header, data = ck.packed(THREE | {"d": torch.arange(4.0) + 30})
        header["b"]["data_offsets"] = [24, 40]  # half into c
        c = opened(write(tmp_path, ck, header, data))
        assert {n for n, t in c.tensors.items() if t.error} == {"b", "c"}
        assert "overlap" in c.tensors["b"].error and "overlap" in c.tensors["c"].error
        assert torch.equal(c.load("a"), THREE["a"])
        assert torch.equal(c.load("d"), torch.arange(4.0) + 30)

    def test_same_span_twice(self, ck, tmp_path, opened):
        """Two names on the very same bytes are an overlap too."""
        header, data = ck.packed(THREE)
        header["c"]["data_offsets"] = header["b"]["data_offsets"]
        c = opened(write(tmp_path, ck, header, data))
        assert {n for n, t in c.tensors.items() if t.error} == {"b", "c"}

    def test_zero_length_spans_never_overlap(self, ck, tmp_path, opened):
        """Empty tensors at any offset inside the data are fine."""
        header, data = ck.packed(THREE | {"e": torch.zeros(0)})
        header["e"]["data_offsets"] = [8, 8]
        c = opened(write(tmp_path, ck, header, data))
        assert not any(t.error for t in c.tensors.values())
        assert c.load("e").shape == (0,)

    def test_truncated_data(self, ck, tmp_path, opened):
        """A file cut short: tensors past the cut are in error, those before it read their values."""
        header, data = ck.packed(THREE)
        c = opened(write(tmp_path, ck, header, data[:-8]))
        assert "data ends at byte" in c.tensors["c"].error
        assert torch.equal(c.load("a"), THREE["a"]) and torch.equal(c.load("b"), THREE["b"])

    def test_truncated_real_file(self, ck, tmp_path, opened):
        """A file written by safetensors and cut in the middle of its data still lists every name."""
        sd = ck.llama_like(1)
        path = ck.write_safetensors(tmp_path / "model.safetensors", sd)
        blob = path.read_bytes()
        header_end = 8 + struct.unpack("<Q", blob[:8])[0]
        path.write_bytes(blob[:header_end + (len(blob) - header_end) // 2])
        c = opened(path)
        assert set(c.tensors) == set(sd)
        bad = {n for n, t in c.tensors.items() if t.error}
        assert bad and bad != set(sd)
        for name in set(sd) - bad:
            assert torch.equal(c.load(name), sd[name])

    def test_file_shrinks_after_open(self, ck, tmp_path, opened):
        """A file truncated after its header was read gives TensorUnreadable, not a crash."""
        header, data = ck.packed(THREE)
        path = write(tmp_path, ck, header, data)
        c = opened(path)
        os.truncate(path, 8 + len(json.dumps(header)) + 8)
        with pytest.raises(TensorUnreadable, match="shorter"):
            c.raw("c")

    @pytest.mark.parametrize("content", [b"", b"\x05\x00\x00", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"])
    def test_tiny_files(self, tmp_path, opened, content):
        """Empty and too-short files are refused; the smallest valid header is an empty checkpoint."""
        path = tmp_path / "model.safetensors"
        path.write_bytes(content)
        if content.endswith(b"{}"):
            assert opened(path).tensors == {}
        else:
            refused(opened, path, "unrecognised first bytes")

    def test_metadata_not_an_object(self, ck, tmp_path, opened):
        """A __metadata__ that is not an object is ignored with a note."""
        header, data = ck.packed(THREE)
        header["__metadata__"] = ["x"]
        c = opened(write(tmp_path, ck, header, data))
        assert c.metadata == {}
        assert any("__metadata__ is not an object" in n and "would refuse" in n for n in c.notes)
        assert set(c.tensors) == set(THREE)

    def test_control_characters_in_names_stay_on_one_line(self, ck, tmp_path, opened):
        """A file name with a newline gives an error message with the newline escaped."""
        path = tmp_path / "bad\nname.safetensors"
        path.write_bytes(ck.safetensors_bytes("{not json"))
        with pytest.raises(CheckpointError) as exc:
            opened(path)
        assert "\n" not in str(exc.value) and "bad\\nname.safetensors" in str(exc.value)


# --- what is at the path ---------------------------------------------------------------------

class TestNotRegularFiles:
    def test_fifo(self, tmp_path, opened):
        """A FIFO named as the checkpoint is refused at once (opening it would block)."""
        os.mkfifo(tmp_path / "model.safetensors")
        refused(opened, tmp_path / "model.safetensors", "not a regular file")

    def test_symlink_loop(self, tmp_path, opened):
        """A symlink loop named as the checkpoint is a one-line error."""
        os.symlink("model.safetensors", tmp_path / "model.safetensors")
        refused(opened, tmp_path / "model.safetensors", "symbolic links")

    def test_device(self, opened):
        """/dev/zero (endless) is refused, not read."""
        with no_hang(), pytest.raises(CheckpointError, match="not a regular file"):
            opened("/dev/zero")

    def test_fifo_and_loop_in_unindexed_directory(self, ck, tmp_path, opened):
        """A FIFO and a symlink loop beside the weights are skipped without blocking."""
        ck.write_safetensors(tmp_path / "model.safetensors", {"w": torch.ones(2)})
        os.mkfifo(tmp_path / "pipe.safetensors")
        os.symlink("loop.bin", tmp_path / "loop.bin")
        with no_hang():
            c = opened(tmp_path)
        assert list(c.tensors) == ["w"]
        assert any("loop.bin" in n and "pipe.safetensors" in n for n in c.notes)


# --- indexes and shards ----------------------------------------------------------------------

def sharded_with_broken_second(ck, tmp_path, sd, breaker):
    """A sharded safetensors checkpoint whose second shard `breaker(directory, shard_name)` damages."""
    directory = ck.write_sharded_safetensors(tmp_path / "ckpt", sd)
    shard = "model-00002-of-00002.safetensors"
    breaker(directory, shard)
    return directory, shard


def replace_with_fifo(directory, shard):
    (directory / shard).unlink()
    os.mkfifo(directory / shard)


def replace_with_loop(directory, shard):
    (directory / shard).unlink()
    os.symlink(shard, directory / shard)


def remove(directory, shard):
    (directory / shard).unlink()


def point_outside(directory, shard):
    """The index names `../<shard>` (which exists, so refusing it is the reader's choice)."""
    (directory / shard).rename(directory.parent / shard)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"] = {n: (f"../{f}" if f == shard else f) for n, f in index["weight_map"].items()}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def symlink_outside(directory, shard):
    """The shard is a symlink to a file outside the checkpoint directory."""
    (directory / shard).rename(directory.parent / shard)
    os.symlink(directory.parent / shard, directory / shard)


def garbage(directory, shard):
    (directory / shard).write_bytes(b"\x00" * 64)


BROKEN_SHARDS = {
    "missing": (remove, "missing"),
    "outside the directory": (point_outside, "outside the checkpoint directory"),
    "symlink outside": (symlink_outside, "outside the checkpoint directory"),
    "fifo": (replace_with_fifo, "not a regular file"),
    "symlink loop": (replace_with_loop, "symbolic links"),
    "not a checkpoint": (garbage, "not a checkpoint file"),
    "bad header": (lambda d, s: (d / s).write_bytes(b"\x10" + b"\x00" * 7 + b"{bad json}......"), "invalid JSON"),
}


class TestShards:
    @pytest.mark.parametrize("kind", list(BROKEN_SHARDS))
    def test_broken_shard_spoils_only_its_tensors(self, ck, tmp_path, diff, kind):
        """A shard that is missing, outside the directory, a FIFO, a loop or damaged: its tensors
        are `error` in a diff, with one line naming the shard; the other shard compares normally."""
        breaker, why = BROKEN_SHARDS[kind]
        sd = ck.llama_like(2)
        directory, shard = sharded_with_broken_second(ck, tmp_path, sd, breaker)
        first, second = ck.split(list(sd), 2)
        with no_hang():
            d = diff(directory, ck.write_safetensors(tmp_path / "good.safetensors", sd))
        assert {d.statuses[n] for n in first} == {"identical"}
        assert {d.statuses[n] for n in second} == {"error"}
        for n in second:
            assert why in d.result(n).error
            one_line_naming(d.result(n).error, shard)
        assert any(why in n for n in d.a.notes)
        assert exit_status(d.catalog, d.table) == 1

    def test_nothing_is_read_outside(self, ck, tmp_path, opened):
        """A tensor assigned to a shard outside the directory is never read, even though that file is valid."""
        sd = ck.llama_like(3)
        directory, shard = sharded_with_broken_second(ck, tmp_path, sd, point_outside)
        c = opened(directory)
        assert all(".." not in f for f in c.files)
        with pytest.raises(TensorUnreadable, match="outside"):
            c.load(ck.split(list(sd), 2)[1][0])

    def test_every_shard_broken(self, ck, tmp_path, opened):
        """When no shard the index names can be read, opening fails with one line."""
        directory = ck.write_sharded_safetensors(tmp_path / "ckpt", ck.llama_like(4))
        for shard in directory.glob("*.safetensors"):
            shard.unlink()
        refused(opened, directory, "none of the shards")

    def test_broken_bin_shard(self, ck, tmp_path, diff):
        """A .bin shard cut in half spoils its own tensors only."""
        sd = ck.llama_like(5)
        directory = ck.write_sharded_bin(tmp_path / "ckpt", sd)
        shard = directory / "pytorch_model-00001-of-00002.bin"
        shard.write_bytes(shard.read_bytes()[:300])
        first, second = ck.split(list(sd), 2)
        d = diff(directory, ck.write_safetensors(tmp_path / "good.safetensors", sd))
        assert {d.statuses[n] for n in first} == {"error"}
        assert {d.statuses[n] for n in second} == {"identical"}


# --- torch zip archives ----------------------------------------------------------------------

def members(path):
    with zipfile.ZipFile(path) as z:
        return {info.filename: info for info in z.infolist()}


def rewrite_deflated(src, dst, which: str):
    """Copy a torch.save archive with the standard library, deflating members whose names end with `which`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith(which) else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=method)


def patch_member(path, suffix: str, local_field: int | None, central_field: int, fmt: str, value: int):
    """Overwrite one field of a member's local and central zip headers, bytes in place."""
    blob = bytearray(path.read_bytes())
    info = next(i for name, i in members(path).items() if name.endswith(suffix))
    if local_field is not None:
        struct.pack_into(fmt, blob, info.header_offset + local_field, value)
    at = blob.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", blob, at + 28)[0]
        if bytes(blob[at + 46:at + 46 + name_len]).endswith(suffix.encode()):
            struct.pack_into(fmt, blob, at + central_field, value)
        at = blob.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(blob))


ZIP_SD = {"a": torch.arange(8.0), "b": torch.arange(4.0) + 100, "c": torch.arange(16.0) - 50}


class TestTorchZip:
    def test_deflated_data_member(self, tmp_path, opened):
        """A data member rewritten deflated is reported as compressed, and no tensor is read from wrong bytes."""
        torch.save({"a": torch.zeros(1024), "b": torch.randn(4), "c": torch.randn(4000)}, tmp_path / "src.bin")
        saved = torch.load(tmp_path / "src.bin", weights_only=True)
        rewrite_deflated(tmp_path / "src.bin", tmp_path / "model.bin", "data/0")
        c = opened(tmp_path / "model.bin")
        assert "compressed" in c.tensors["a"].error
        for name, info in c.tensors.items():
            if info.error is None:
                assert torch.equal(c.load(name), saved[name]), f"{name} read from the wrong bytes"
            else:
                one_line_naming(info.error, "model.bin")

    def test_deflated_pickle(self, tmp_path, opened):
        """A deflated data.pkl spoils the file (it is decompression, i.e. allocation, sized by the file)."""
        torch.save(ZIP_SD, tmp_path / "src.bin")
        rewrite_deflated(tmp_path / "src.bin", tmp_path / "model.bin", "data.pkl")
        refused(opened, tmp_path / "model.bin", "data.pkl is compressed")

    def test_compression_method_patched(self, tmp_path, opened):
        """A member whose headers claim compression spoils its tensor only; the rest read their values."""
        path = tmp_path / "model.bin"
        torch.save(ZIP_SD, path)
        patch_member(path, "data/1", 8, 10, "<H", zipfile.ZIP_DEFLATED)
        c = opened(path)
        assert "compressed" in c.tensors["b"].error
        one_line_naming(c.tensors["b"].error, "model.bin")
        assert torch.equal(c.load("a"), ZIP_SD["a"]) and torch.equal(c.load("c"), ZIP_SD["c"])

    @pytest.mark.parametrize("field", [20, 24])  # central directory: compressed size, uncompressed size
    def test_member_sizes_patched(self, tmp_path, opened, field):
        """A data member whose recorded size is wrong is refused with one line."""
        path = tmp_path / "model.bin"
        torch.save(ZIP_SD, path)
        patch_member(path, "data/1", None, field, "<I", 999)
        refused(opened, path, "zip|size")

    def test_pickle_sizes_patched(self, tmp_path, opened):
        """A data.pkl whose recorded sizes disagree is refused before torch reads it."""
        path = tmp_path / "model.bin"
        torch.save(ZIP_SD, path)
        patch_member(path, "data.pkl", None, 24, "<I", 5)
        refused(opened, path, "data.pkl has inconsistent sizes")

    def test_truncated_archive(self, tmp_path, opened):
        """A zip cut in half (no central directory) is refused with one line."""
        path = tmp_path / "model.bin"
        torch.save(ZIP_SD | {"big": torch.randn(10_000)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        refused(opened, path, "damaged zip archive")

    def test_zip_without_pickle(self, tmp_path, opened):
        """A zip that is not a torch.save archive is refused."""
        with zipfile.ZipFile(tmp_path / "model.bin", "w") as z:
            z.writestr("readme.txt", "hello")
        refused(opened, tmp_path / "model.bin", "no single data.pkl")

    def test_truncated_legacy(self, tmp_path, opened):
        """A legacy torch file cut short is refused with one line."""
        path = tmp_path / "old.bin"
        torch.save({"w": torch.randn(100_000)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:20_000])
        refused(opened, path, "torch.load failed")
