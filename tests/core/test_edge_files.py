"""Files real tools write that break a rule somewhere: safetensors files the safetensors
library refuses, torch files holding lists of tensors or saved with pickle protocol 4 or 5,
and names that a GGUF reader or a PEFT state dict shows differently from how they are stored.

Every file is written by its real writer (`torch.save`, `safetensors`, `gguf`'s writer), or
byte by byte where no writer makes it; where the safetensors library's own verdict matters,
the test asks the library too.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open

from weightscope.cli import main
from weightscope.sources.discover import open_checkpoint
from weightscope.sources.errors import CheckpointError

TWO = {"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, 3, dtype=torch.bfloat16)}


def library_refuses(path) -> bool:
    """Whether the safetensors library refuses to open `path`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except Exception:  # SafetensorError, or a plain exception from the Rust side
        return True
    return False


def refusal_note(checkpoint) -> str | None:
    return next((n for n in checkpoint.notes if "safetensors library would refuse" in n), None)


class TestSafetensorsTheLibraryRefuses:
    @pytest.mark.parametrize("where, expected", [
        ("between", "8 bytes between a and b belong to no tensor"),
        ("before", "8 bytes before the first tensor, a, belong to no tensor"),
        ("after", "5 bytes after the last tensor belong to no tensor"),
    ])
    def test_bytes_no_tensor_owns(self, ck, tmp_path, opened, where, expected):
        """A hole between tensors, before the first or after the last: the file opens, every tensor
        reads its own bytes, and one note names the problem and the library's refusal."""
        header, data = ck.packed(TWO)
        size_a = header["a"]["data_offsets"][1]
        if where == "between":
            header["b"]["data_offsets"] = [size_a + 8, len(data) + 8]
            data = data[:size_a] + b"\xee" * 8 + data[size_a:]
        elif where == "before":
            header = {k: {**v, "data_offsets": [o + 8 for o in v["data_offsets"]]} for k, v in header.items()}
            data = b"\xee" * 8 + data
        else:
            data = data + b"\xee" * 5
        path = tmp_path / "model.safetensors"
        path.write_bytes(ck.safetensors_bytes(header, data))
        assert library_refuses(path)
        c = opened(path)
        note = refusal_note(c)
        assert note is not None and expected in note and note.startswith(str(path)), c.notes
        assert sum("would refuse" in n for n in c.notes) == 1
        for name, tensor in TWO.items():
            assert torch.equal(c.load(name), tensor)

    def test_metadata_values_that_are_not_strings(self, ck, tmp_path, opened):
        """`__metadata__` must map strings to strings: other values are dropped and named."""
        header, data = ck.packed(TWO)
        header = {"__metadata__": {"format": "pt", "step": 1200, "tags": ["x"]}} | header
        path = tmp_path / "model.safetensors"
        path.write_bytes(ck.safetensors_bytes(header, data))
        assert library_refuses(path)
        c = opened(path)
        assert c.metadata == {"format": "pt"}
        note = refusal_note(c)
        assert "__metadata__ value 'step' is int, not a string" in note
        assert "__metadata__ value 'tags' is list, not a string" in note

    def test_every_problem_in_one_note(self, ck, tmp_path, opened):
        header, data = ck.packed(TWO)
        header["__metadata__"] = {"epoch": 3}
        path = tmp_path / "model.safetensors"
        path.write_bytes(ck.safetensors_bytes(header, data + b"\0" * 3))
        notes = [n for n in opened(path).notes if "would refuse" in n]
        assert len(notes) == 1 and "'epoch' is int" in notes[0] and "3 bytes after the last tensor" in notes[0]

    def test_files_the_library_writes_get_no_note(self, ck, tmp_path, opened):
        """What save_file writes (odd sizes, every dtype, empty and scalar tensors, metadata) is clean."""
        sd = {"w": torch.randn(3, 5), "h": torch.randn(7).half(), "i": torch.arange(3, dtype=torch.int8),
              "flag": torch.tensor([True, False, True]), "empty": torch.empty(0, 4), "scalar": torch.tensor(2.5),
              "bf": torch.randn(1, 3).bfloat16()}
        path = ck.write_safetensors(tmp_path / "model.safetensors", sd, metadata={"format": "pt"})
        assert not library_refuses(path)
        assert refusal_note(opened(path)) is None


class TestTensorLists:
    @pytest.mark.parametrize("obj, names", [
        ([torch.ones(2), torch.zeros(3)], ["0", "1"]),
        ((torch.ones(2), torch.zeros(3)), ["0", "1"]),
        ([(torch.ones(2), torch.zeros(3)), (torch.full((4,), 2.0),)], ["0.0", "0.1", "1.0"]),
        ({"layers": [torch.ones(2), torch.zeros(2)], "head": torch.ones(1)}, ["layers.0", "layers.1", "head"]),
    ])
    @pytest.mark.parametrize("zip_format", [True, False])
    def test_named_by_index(self, tmp_path, opened, obj, names, zip_format):
        """`torch.save` of a list or tuple of tensors (nested, or inside a state dict) opens with the
        tensors named by their indices, each holding its own values."""
        path = tmp_path / "weights.bin"
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
        c = opened(path)
        assert list(c.tensors) == names

        def leaves(value):
            if isinstance(value, torch.Tensor):
                return [value]
            items = value.values() if isinstance(value, dict) else value
            return [leaf for item in items for leaf in leaves(item)]

        for name, tensor in zip(names, leaves(obj)):
            assert torch.equal(c.load(name), tensor)

    def test_list_pairs_with_its_safetensors_copy(self, ck, tmp_path, diff):
        tensors = [torch.randn(3, 4), torch.randn(4)]
        torch.save(tensors, tmp_path / "weights.bin")
        copy = ck.write_safetensors(tmp_path / "weights.safetensors", {str(i): t for i, t in enumerate(tensors)})
        assert set(diff(tmp_path / "weights.bin", copy).statuses.values()) == {"identical"}

    def test_a_list_of_other_things_is_still_refused(self, tmp_path, opened):
        torch.save([{"lr": 0.1}, 3], tmp_path / "trainer.bin")
        with pytest.raises(CheckpointError, match="no model weights found"):
            opened(tmp_path / "trainer.bin")


class TestPickleProtocols:
    @pytest.mark.parametrize("protocol", [4, 5])
    @pytest.mark.parametrize("zip_format", [True, False])
    def test_named_with_the_way_out(self, tmp_path, capsys, monkeypatch, protocol, zip_format):
        """torch's weights_only loader stops at protocol 4's FRAME opcode ("Unsupported operand
        149"): the one-line error names the protocol and how to re-save the file, and torch.load
        is never called without weights_only=True."""
        path = tmp_path / "pytorch_model.bin"
        torch.save({"w": torch.ones(2)}, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
        calls = []
        load = torch.load
        monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or load(*a, **k))
        with pytest.raises(CheckpointError) as refused:
            open_checkpoint(str(path))
        assert calls and all(weights_only is True for weights_only in calls)
        assert main(["diff", str(path), str(path), "--no-cache"]) == 2  # the same, from the engine's process
        err = capsys.readouterr().err.strip()
        assert err == f"weightscope: {refused.value}"
        assert "\n" not in err and str(path) in err
        assert f"saved with pickle protocol {protocol}" in err
        assert "re-save it with torch.save's default protocol (2), or as safetensors" in err

    def test_protocol_2_still_reads(self, tmp_path, opened):
        torch.save({"w": torch.ones(2)}, tmp_path / "m.bin", pickle_protocol=2)
        assert torch.equal(opened(tmp_path / "m.bin").load("w"), torch.ones(2))


def diff_json(capsys, a, b) -> dict:
    main(["diff", str(a), str(b), "--json", "--no-cache"])
    return {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}


class TestStoredNames:
    def test_gguf_names_as_the_file_stores_them(self, ck, tmp_path, capsys):
        """A GGUF side's tensors pair under their Hugging Face names, while name_b is the name a
        script finds in the GGUF file (`blk.0.attn_norm.weight`)."""
        sd = {"model.embed_tokens.weight": torch.randn(16, 8), "model.layers.0.input_layernorm.weight": torch.ones(8),
              "model.norm.weight": torch.ones(8)}
        source = ck.write_safetensors(tmp_path / "model.safetensors", sd)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 1)
        writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
        writer.add_block_count(1)
        for name, tensor in sd.items():
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), tensor.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        found = diff_json(capsys, source, tmp_path / "model.gguf")
        norm = found["model.layers.0.input_layernorm.weight"]
        assert norm["status"] == "identical"
        assert (norm["name_a"], norm["name_b"]) == ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight")
        assert found["model.embed_tokens.weight"]["name_b"] == "token_embd.weight"
        reader = gguf.GGUFReader(str(tmp_path / "model.gguf"))
        assert {t["name_b"] for t in found.values()} == {t.name for t in reader.tensors}

    def test_peft_state_dict_names_as_stored(self, ck, tmp_path, capsys):
        """A PEFT-wrapped state dict: a tensor shown under the base's name reports the key the
        file holds (`base_model.model.….base_layer.weight`)."""
        sd = ck.llama_like(0, layers=1)
        q = "model.layers.0.self_attn.q_proj"
        wrapped = {f"base_model.model.{n}": t for n, t in sd.items() if not n.startswith(q)}
        wrapped[f"base_model.model.{q}.base_layer.weight"] = sd[f"{q}.weight"]
        wrapped[f"base_model.model.{q}.lora_A.default.weight"] = torch.randn(2, 8)
        wrapped[f"base_model.model.{q}.lora_B.default.weight"] = torch.randn(8, 2)
        base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
        found = diff_json(capsys, base, ck.write_safetensors(tmp_path / "wrapped.safetensors", wrapped))
        assert found["model.norm.weight"]["name_b"] == "base_model.model.model.norm.weight"
        assert found[f"{q}.weight"]["name_b"] == f"base_model.model.{q}.base_layer.weight"
        assert found[f"{q}.lora_A.default.weight"]["name_b"] == f"base_model.model.{q}.lora_A.default.weight"
        assert found["model.norm.weight"]["name_a"] == "model.norm.weight"
