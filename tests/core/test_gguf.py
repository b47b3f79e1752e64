"""GGUF: files written with the gguf package's own writer, as llama.cpp's converter writes them.

A small Llama (grouped-query attention, so Q and K are permuted over different head counts)
is exported the way convert_hf_to_gguf.py does it: names through gguf's tensor name map,
Q/K rows permuted, 2-D weights quantized and 1-D ones kept in F32. Hostile headers are
written byte by byte.
"""

import json
import math
import struct
import subprocess
import sys
import time
import tracemalloc

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from weightscope.cli import main
from weightscope.compare import device
from weightscope.sources.checkpoint import TensorUnreadable
from weightscope.sources.errors import CheckpointError
from weightscope.sources.formats import gguf as gguf_format

HEADS, KV_HEADS = 4, 2


def llama(seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int = 96) -> dict[str, torch.Tensor]:
    """A Llama state dict with grouped-query attention (K/V have half the heads of Q)."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = hidden // HEADS

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    sd = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[f"{p}self_attn.q_proj.weight"] = rand(hidden, hidden)
        sd[f"{p}self_attn.k_proj.weight"] = rand(KV_HEADS * head_dim, hidden)
        sd[f"{p}self_attn.v_proj.weight"] = rand(KV_HEADS * head_dim, hidden)
        sd[f"{p}self_attn.o_proj.weight"] = rand(hidden, hidden)
        sd[f"{p}mlp.gate_proj.weight"] = rand(2 * hidden, hidden)
        sd[f"{p}mlp.up_proj.weight"] = rand(2 * hidden, hidden)
        sd[f"{p}mlp.down_proj.weight"] = rand(hidden, 2 * hidden)
        sd[f"{p}input_layernorm.weight"] = 1 + 0.1 * rand(hidden)
        sd[f"{p}post_attention_layernorm.weight"] = 1 + 0.1 * rand(hidden)
    sd["model.norm.weight"] = 1 + 0.1 * rand(hidden)
    sd["lm_head.weight"] = rand(vocab, hidden)
    return sd


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, sd: dict[str, torch.Tensor], qtype: Q = Q.F32, arch: str = "llama",
               permute_qk: bool = True, **writer_args):
    """Export `sd` as convert_hf_to_gguf.py does for `arch`, 2-D weights as `qtype`."""
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    layers = 1 + max(int(n.split(".")[2]) for n in sd if n.startswith("model.layers."))
    names = gguf.get_tensor_name_map(model_arch, layers)
    writer = gguf.GGUFWriter(str(path), arch, **writer_args)
    writer.add_block_count(layers)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_token_list([f"t{i}" for i in range(100)])
    for name, tensor in sd.items():
        data = tensor.numpy()
        if permute_qk and name.endswith("q_proj.weight"):
            data = permute(data, HEADS)
        if permute_qk and name.endswith("k_proj.weight"):
            data = permute(data, KV_HEADS)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 2 and qtype not in (Q.F32, Q.F16):
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, data.astype(np.float16) if data.ndim == 2 and qtype == Q.F16 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def source(ck, tmp_path):
    sd = llama(0)
    return sd, ck.write_safetensors(tmp_path / "model.safetensors", sd)


class TestExport:
    def test_f32_export_pairs_by_name_and_is_identical(self, source, tmp_path, diff):
        """Every tensor pairs by its Hugging Face name, in torch shape order, with identical
        values: the Q/K permutation (over 4 heads for Q, 2 for K) is undone."""
        sd, path = source
        d = diff(path, write_gguf(tmp_path / "model.gguf", sd))
        assert d.b.format == "gguf"
        assert set(d.b.tensors) == set(sd)
        assert d.statuses == dict.fromkeys(sd, "identical")
        assert d.alignment.notes == []  # paired by exact names, no mapping needed
        assert {n: t.shape for n, t in d.b.tensors.items()} == {n: tuple(t.shape) for n, t in sd.items()}
        q = sd["model.layers.0.self_attn.q_proj.weight"].numpy()
        assert not np.array_equal(permute(q, HEADS), q)  # the file really holds permuted rows
        notes = " ".join(d.b.notes)
        assert "blk.0.attn_q.weight → model.layers.0.self_attn.q_proj.weight" in notes
        assert "Q/K rows of 4 tensors put back in Hugging Face order" in notes

    def test_f16_export_is_close(self, source, tmp_path, diff):
        """An F16 export: weights read as float16 and are close; F32 norms stay identical."""
        sd, path = source
        d = diff(path, write_gguf(tmp_path / "model.gguf", sd, Q.F16))
        for name, tensor in sd.items():
            result = d.result(name)
            if tensor.ndim == 1:
                assert result.status == "identical"
            else:
                assert d.b.tensors[name].dtype == "float16" and d.b.tensors[name].quant is None
                assert result.status == "close" and result.diff.rel_l2 < 5e-4

    @pytest.mark.parametrize("qtype, low, high", [(Q.Q8_0, 0.004, 0.007), (Q.Q4_0, 0.075, 0.095)])
    def test_quantization_error(self, ck, tmp_path, diff, qtype, low, high):
        """Q8_0 costs about 0.5% rel_l2 on normally distributed weights and Q4_0 about 8–9%;
        SNR in dB is −20·log10(rel_l2); the quantization type is the dtype shown."""
        sd = llama(1, hidden=256, layers=1, vocab=256)
        path = ck.write_safetensors(tmp_path / "model.safetensors", sd)
        d = diff(path, write_gguf(tmp_path / f"{qtype.name}.gguf", sd, qtype))
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        for name, tensor in sd.items():
            info, result = d.b.tensors[name], d.result(name)
            if tensor.ndim == 1:
                assert info.quant is None and result.status == "identical"
                continue
            assert (info.quant, info.stored_dtype, info.dtype) == (qtype.name, qtype.name, "float32")
            assert info.nbytes == tensor.numel() // block * size  # the bytes stored, not decoded
            assert result.status == "changed"
            assert low < result.diff.rel_l2 < high, (name, result.diff.rel_l2)
            assert result.diff.snr_db == pytest.approx(-20 * math.log10(result.diff.rel_l2))
            assert 0 < result.diff.max_abs < 1

    def test_torch_path_loads_the_same_values(self, source, tmp_path, diff):
        """`load` (what `--device cuda` reads) gives the dequantized, un-permuted tensor: the torch
        statistics path finds the figures the CPU kernels found."""
        sd, path = source
        d = diff(path, write_gguf(tmp_path / "model.gguf", sd, Q.Q8_0))
        name = "model.layers.1.self_attn.k_proj.weight"
        kernel = d.result(name).diff
        _, _, torch_path = device.pair_stats(d.a.load(name), d.b.load(name), kernel.atol, kernel.rtol, "cpu")
        assert d.b.load(name).shape == sd[name].shape
        assert torch_path.snr_db == pytest.approx(kernel.snr_db, rel=1e-9)
        assert torch_path.max_abs == pytest.approx(kernel.max_abs, rel=1e-6)

    def test_quantized_export_in_json_and_text(self, source, tmp_path, capsys):
        """`diff --json` spells the quantized dtype `Q4_0` and reports `snr_db`; the table has an SNR column."""
        sd, path = source
        exported = write_gguf(tmp_path / "model.gguf", sd, Q.Q4_0)
        assert main(["diff", str(path), str(exported), "--json", "--no-cache"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc["b"]["format"] == "gguf"
        q = next(t for t in doc["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
        assert (q["dtype_a"], q["dtype_b"]) == ("float32", "Q4_0")
        assert 10 < q["diff"]["snr_db"] < 30
        norm = next(t for t in doc["tensors"] if t["name"] == "model.norm.weight")
        assert norm["diff"]["snr_db"] is None and norm["diff"]["undefined"]["snr_db"] == "nothing changed"
        assert main(["diff", str(path), str(exported), "--no-cache"]) == 1
        out = capsys.readouterr().out
        assert "SNR dB" in next(line for line in out.splitlines() if line.startswith("status"))
        assert "float32 → Q4_0" in next(line for line in out.splitlines() if line.startswith("changed"))

    def test_architecture_without_permutation(self, source, tmp_path, diff):
        """Qwen2's converter leaves Q/K rows alone: names still map, and nothing is un-permuted."""
        sd, path = source
        d = diff(path, write_gguf(tmp_path / "qwen.gguf", sd, arch="qwen2", permute_qk=False))
        assert d.statuses == dict.fromkeys(sd, "identical")
        assert not any("Q/K rows" in n for n in d.b.notes)

    def test_unknown_architecture_keeps_gguf_names(self, tmp_path, opened):
        """Names of an architecture gguf's tables do not know stay as the file has them, with a note."""
        writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "no-such-arch")
        writer.add_tensor("blk.0.attn_q.weight", np.ones((2, 32), np.float32))
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        c = opened(tmp_path / "x.gguf")
        assert list(c.tensors) == ["blk.0.attn_q.weight"]
        assert "no Hugging Face names known for architecture 'no-such-arch'" in c.notes[0]

    def test_recognised_by_content(self, source, tmp_path, opened):
        """A GGUF named like a safetensors file is read as GGUF."""
        sd, _ = source
        c = opened(write_gguf(tmp_path / "model.safetensors", sd))
        assert c.format == "gguf" and set(c.tensors) == set(sd)

    def test_listing_needs_no_torch(self, source, tmp_path):
        """Opening a quantized GGUF and listing it imports neither torch nor anything heavy."""
        sd, _ = source
        path = write_gguf(tmp_path / "m.gguf", sd, Q.Q4_0)
        code = ("import json, sys\nfrom weightscope.sources.discover import open_checkpoint\n"
                f"c = open_checkpoint({str(path)!r})\n"
                "print(json.dumps([len(c.tensors), [m for m in sys.modules if m.split('.')[0] == 'torch']]))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [len(sd), []]


class TestDequantization:
    def test_chunked_equals_whole(self, source, tmp_path, opened, monkeypatch):
        """Dequantizing a few blocks (or rows) at a time gives exactly gguf's whole-tensor result,
        with rows put back in Hugging Face order."""
        sd, _ = source
        path = write_gguf(tmp_path / "m.gguf", sd, Q.Q4_0)
        monkeypatch.setattr(gguf_format, "CHUNK_BYTES", 256)
        c = opened(path)
        reader = gguf.GGUFReader(str(path))  # trusted here: the file was just written
        stored = {t.name: t for t in reader.tensors}
        for gguf_name, hf_name, heads in (("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight", None),
                                          ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", KV_HEADS)):
            whole = gguf.quants.dequantize(stored[gguf_name].data, Q.Q4_0)
            expected = whole if heads is None else unpermute(whole, heads)
            np.testing.assert_array_equal(c.load(hf_name).numpy(), expected)

    def test_plain_types_keep_their_dtype_and_bytes(self, tmp_path, opened):
        """Element types are not quantized: they read as their torch dtype, straight from the map."""
        values = np.linspace(-3, 3, 64).reshape(2, 32)
        bf16 = gguf.quants.quantize(values.astype(np.float32), Q.BF16)  # bfloat16 bits, as bytes
        arrays = {"f64": values, "f16": values.astype(np.float16), "i8": values.astype(np.int8),
                  "i16": values.astype(np.int16), "i32": values.astype(np.int32), "i64": values.astype(np.int64)}
        writer = gguf.GGUFWriter(str(tmp_path / "p.gguf"), "llama")
        for name, array in arrays.items():
            writer.add_tensor(name, array)
        writer.add_tensor("bf16", bf16, raw_dtype=Q.BF16)
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        c = opened(tmp_path / "p.gguf")
        dtypes = {"f64": "float64", "f16": "float16", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
                  "bf16": "bfloat16"}
        assert {n: (t.dtype, t.quant, t.shape) for n, t in c.tensors.items()} == {
            n: (dtype, None, (2, 32)) for n, dtype in dtypes.items()}
        for name, array in arrays.items():
            assert c.raw(name).tobytes() == array.tobytes()
        assert torch.equal(c.load("bf16"), torch.from_numpy(values.astype(np.float32)).bfloat16())

    @pytest.mark.parametrize("kind", [k for k in Q if k.name not in gguf_format.PLAIN
                                      and gguf_format.dequantizable(k)], ids=lambda k: k.name)
    def test_every_type_gguf_dequantizes(self, tmp_path, opened, kind):
        """Random blocks of every quantized type the installed gguf supports read as its dequantization."""
        block, size = gguf.GGML_QUANT_SIZES[kind]
        blocks = np.random.default_rng(kind.value).integers(0, 256, (3, 2 * size), dtype=np.uint8)
        writer = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
        writer.add_tensor("blk.0.ffn_up.weight", blocks, raw_dtype=kind)
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        c = opened(tmp_path / "q.gguf")
        info = c.tensors["model.layers.0.mlp.up_proj.weight"]
        assert (info.shape, info.quant) == ((3, 2 * block), kind.name)
        values = c.raw(info.name).view(np.float32)
        with np.errstate(all="ignore"):  # random scales include NaN and Inf
            expected = gguf.quants.dequantize(blocks, kind).reshape(-1)
        np.testing.assert_array_equal(values, expected)

    def test_type_without_dequantizer_spoils_only_its_tensor(self, tmp_path, opened):
        """A type gguf cannot dequantize (Q8_K) marks its tensor unreadable, naming the type."""
        writer = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
        writer.add_tensor("blk.0.ffn_up.weight", np.zeros((1, 292), np.uint8), raw_dtype=Q.Q8_K)
        writer.add_tensor("output_norm.weight", np.ones(4, np.float32))
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        c = opened(tmp_path / "q.gguf")
        assert "cannot dequantize Q8_K" in c.tensors["model.layers.0.mlp.up_proj.weight"].error
        assert c.raw("model.norm.weight").view(np.float32).tolist() == [1.0] * 4
        with pytest.raises(TensorUnreadable):
            c.raw("model.layers.0.mlp.up_proj.weight")


class TestSplit:
    def test_directory_of_parts_reads_every_part(self, source, tmp_path, diff):
        """gguf-split parts in a directory form one model; later parts, which carry no
        architecture, are named and un-permuted with the first part's metadata."""
        sd, path = source
        (tmp_path / "parts").mkdir()
        write_gguf(tmp_path / "parts" / "model.gguf", sd, split_max_tensors=6)
        parts = sorted(p.name for p in (tmp_path / "parts").iterdir())
        assert parts == [f"model-0000{k}-of-00004.gguf" for k in range(1, 5)]
        d = diff(path, tmp_path / "parts")
        assert d.statuses == dict.fromkeys(sd, "identical")
        assert "split GGUF: reading all 4 parts" in d.b.notes

    def test_one_part_says_so(self, source, tmp_path, opened):
        """A later part opened alone lacks the architecture: GGUF names, and a note pointing to the directory."""
        sd, _ = source
        write_gguf(tmp_path / "model.gguf", sd, split_max_tensors=6)
        c = opened(tmp_path / "model-00002-of-00004.gguf")
        assert len(c.tensors) == 6 and all(n.startswith("blk.") for n in c.tensors)
        assert c.notes[0].endswith("part 2 of 4 of a split GGUF; open its directory for all parts")
        assert c.notes[1].endswith("names no architecture; GGUF names kept")

    def test_several_models_are_refused(self, source, tmp_path, opened):
        """A directory of several quantizations cannot be guessed: a one-line error lists them."""
        sd, _ = source
        (tmp_path / "repo").mkdir()
        write_gguf(tmp_path / "repo" / "model-Q8_0.gguf", sd, Q.Q8_0)
        write_gguf(tmp_path / "repo" / "model-Q4_0.gguf", sd, Q.Q4_0)
        with pytest.raises(CheckpointError, match="holds 2 GGUF files that are not the parts of one model; "
                                                  "name one: model-Q4_0.gguf, model-Q8_0.gguf"):
            opened(tmp_path / "repo")

    def test_part_names_must_match_the_headers(self, source, tmp_path, opened):
        """Two whole models named like parts are refused: their headers declare no split."""
        sd, _ = source
        (tmp_path / "parts").mkdir()
        for k in (1, 2):
            write_gguf(tmp_path / "parts" / f"m-0000{k}-of-00002.gguf", sd)
        with pytest.raises(CheckpointError, match="split.no and split.count do not match their names"):
            opened(tmp_path / "parts")


# ------------------------------------------------------------------------ hostile headers, by hand

def string(text, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def kv(key, kind: int, payload: bytes) -> bytes:
    return string(key) + struct.pack("<I", kind) + payload


def tensor(name: str, dims, ggml_type: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    return (string(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<II", ggml_type, 0)[:4] + struct.pack("<Q", offset))


def gguf_bytes(kvs=(), tensors=(), data: bytes = b"", n_tensors=None, n_kv=None, version: int = 3) -> bytes:
    head = (b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                   len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors))
    return head + bytes(-len(head) % 32) + data


ARCH = kv("general.architecture", 8, string("llama"))
GOOD = tensor("output_norm.weight", [4])
HOSTILE = {
    "absurd tensor count": (gguf_bytes([ARCH], [GOOD], bytes(16), n_tensors=2 ** 60), "tensor count"),
    "tensor count over the limit": (gguf_bytes(n_tensors=2 ** 19) + bytes(24 * 2 ** 19), "exceeds the limit"),
    "absurd key-value count": (gguf_bytes([ARCH], n_kv=2 ** 63), "key-value count"),
    "absurd key length": (gguf_bytes([string("k", 2 ** 62) + b"k"]), "metadata key needs 4611686018427387904 bytes"),
    "key over the limit": (gguf_bytes([kv("k" * 70_000, 4, bytes(4))]), "exceeds the 65536-byte limit"),
    "absurd string length": (gguf_bytes([kv("general.name", 8, string("x", 2 ** 60))]), "general.name needs"),
    "absurd array length": (gguf_bytes([kv("a", 9, struct.pack("<IQ", 4, 2 ** 61))]), "array a of 2305843009213693952"),
    "absurd string array": (gguf_bytes([kv("tokens", 9, struct.pack("<IQ", 8, 2 ** 40))]), "cannot fit"),
    "string array past the end": (gguf_bytes([kv("tokens", 9, struct.pack("<IQ", 8, 3) + string("a", 2 ** 40))],
                                             data=bytes(64)), "runs past the end"),
    "nested array": (gguf_bytes([kv("a", 9, struct.pack("<IQ", 9, 1))]), "array of type 9"),
    "unknown value type": (gguf_bytes([kv("a", 13, b"")]), "unknown value type 13"),
    "absurd dimension count": (gguf_bytes(tensors=[tensor("w", [], n_dims=2 ** 31)]), "2147483648 dimensions"),
    "truncated header": (gguf_bytes([ARCH], [GOOD])[:60], "general.architecture length needs 8 bytes"),
    "version 1": (gguf_bytes(version=1), "GGUF version 1 is not supported"),
    "big-endian": (gguf_bytes(version=3 << 24), "big-endian"),
    "duplicate key": (gguf_bytes([ARCH, ARCH]), "given twice"),
    "duplicate tensor": (gguf_bytes(tensors=[GOOD, GOOD], data=bytes(16)), "described twice"),
    "bad alignment": (gguf_bytes([kv("general.alignment", 4, struct.pack("<I", 3))]), "not a power of two"),
}
SPOILED = {  # the header is sound but one tensor cannot be read: that tensor carries the error
    "absurd dimensions": (tensor("token_embd.weight", [2 ** 62, 2 ** 62]), "data ends at byte"),
    "offset past the end": (tensor("token_embd.weight", [4], offset=2 ** 40), "data ends at byte"),
    "misaligned offset": (tensor("token_embd.weight", [4], offset=4), "not a multiple of the alignment 32"),
    "unknown type": (tensor("token_embd.weight", [4], ggml_type=99), "unknown GGML type 99"),
    "row not in blocks": (tensor("token_embd.weight", [31], ggml_type=Q.Q4_0), "do not split into Q4_0 blocks"),
}


def quickly_and_small(action):
    """Run `action`; it must finish within a second and never allocate more than 16 MB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        return action()
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < 1.0, f"took {elapsed:.2f} s"
        assert peak < 16 << 20, f"allocated {peak} bytes"


class TestHostileHeaders:
    @pytest.mark.parametrize("content, why", HOSTILE.values(), ids=HOSTILE.keys())
    def test_refused_in_one_line(self, tmp_path, opened, content, why):
        """Counts, lengths and dimension counts the file cannot hold are refused at once, without
        allocating by them, in one line naming the file."""
        path = tmp_path / "hostile.gguf"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as exc:
            quickly_and_small(lambda: opened(path))
        message = str(exc.value)
        assert why in message and str(path) in message and "\n" not in message

    @pytest.mark.parametrize("entry, why", SPOILED.values(), ids=SPOILED.keys())
    def test_bad_tensor_spoils_only_itself(self, tmp_path, opened, entry, why):
        """Dimensions, offsets and types that do not fit spoil their tensor; the rest reads."""
        path = tmp_path / "spoiled.gguf"
        path.write_bytes(gguf_bytes([ARCH], [GOOD, entry], data=np.arange(4, dtype=np.float32).tobytes()))
        c = quickly_and_small(lambda: opened(path))
        bad = c.tensors["model.embed_tokens.weight"]
        assert why in bad.error and str(path) in bad.error and "\n" not in bad.error
        assert c.raw("model.norm.weight").view(np.float32).tolist() == [0.0, 1.0, 2.0, 3.0]
        with pytest.raises(TensorUnreadable):
            c.raw("model.embed_tokens.weight")

    def test_overlapping_tensors_spoil_each_other(self, tmp_path, opened):
        path = tmp_path / "overlap.gguf"
        path.write_bytes(gguf_bytes([ARCH], [GOOD, tensor("token_embd.weight", [4])], data=bytes(16)))
        c = opened(path)
        assert "bytes overlap those of model.embed_tokens.weight" in c.tensors["model.norm.weight"].error
        assert "bytes overlap those of model.norm.weight" in c.tensors["model.embed_tokens.weight"].error

    def test_truncated_data_spoils_the_tensors_it_held(self, source, tmp_path, opened):
        """A file cut short in its data keeps its header: the tensors that lay past the cut are marked."""
        sd, _ = source
        blob = write_gguf(tmp_path / "full.gguf", sd).read_bytes()
        (tmp_path / "cut.gguf").write_bytes(blob[:len(blob) // 2])
        c = opened(tmp_path / "cut.gguf")
        broken = [n for n, t in c.tensors.items() if t.error]
        assert 0 < len(broken) < len(sd) and all("data ends at byte" in c.tensors[n].error for n in broken)
        assert "lm_head.weight" in broken
