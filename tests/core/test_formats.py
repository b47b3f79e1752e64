"""Reading single files: safetensors, zip and legacy torch.save, training checkpoints."""

import argparse
import json

import numpy as np
import pytest
import torch

from weightscope.sources.checkpoint import TensorUnreadable
from weightscope.sources.errors import CheckpointError

EDGE = {
    "empty": torch.zeros(0, 4),
    "empty_bf16": torch.zeros(3, 0, dtype=torch.bfloat16),
    "scalar": torch.tensor(3.5),
    "scalar_bf16": torch.tensor(-1.25, dtype=torch.bfloat16),
    "scalar_int": torch.tensor(7),
    "mask": torch.tensor([True, False, True]),
    "ids": torch.arange(6, dtype=torch.int32).reshape(2, 3),
}


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same_tensors(checkpoint, sd):
    """Every name of `sd` is listed with its dtype and shape, and loads to its values and bytes."""
    assert set(checkpoint.tensors) == set(sd)
    for name, expected in sd.items():
        info = checkpoint.tensors[name]
        assert info.error is None, info.error
        assert info.dtype == str(expected.dtype).removeprefix("torch.")
        assert info.shape == tuple(expected.shape)
        assert info.nbytes == expected.numel() * expected.element_size()
        loaded = checkpoint.load(name)
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert torch.equal(loaded, expected), name
        raw = checkpoint.raw(name)
        assert isinstance(raw, np.ndarray) and raw.dtype == np.uint8
        assert raw.tobytes() == as_bytes(expected), name


class TestSafetensors:
    def test_lists_from_header_and_loads_values(self, ck, tmp_path, opened):
        """Names, dtypes and shapes come from the header; `load`/`raw` give the saved values and bytes."""
        sd = ck.llama_like(0)
        c = opened(ck.write_safetensors(tmp_path / "model.safetensors", sd))
        assert c.format == "safetensors"
        assert c.files == [str(tmp_path / "model.safetensors")]
        assert_same_tensors(c, sd)
        assert c.parameters == sum(t.numel() for t in sd.values())
        assert c.nbytes == 4 * c.parameters

    def test_bf16_load_and_raw(self, ck, tmp_path, opened):
        """bf16 tensors load as bf16 with their exact values (numpy has no bf16)."""
        sd = ck.llama_like(1, dtype=torch.bfloat16)
        c = opened(ck.write_safetensors(tmp_path / "bf16.safetensors", sd))
        assert {t.dtype for t in c.tensors.values()} == {"bfloat16"}
        assert_same_tensors(c, sd)

    def test_spans_point_at_the_data(self, ck, tmp_path, opened):
        """Each tensor's byte span in the file holds exactly its bytes."""
        sd = ck.llama_like(2, layers=1)
        path = ck.write_safetensors(tmp_path / "m.safetensors", sd)
        blob = path.read_bytes()
        for name, info in opened(path).tensors.items():
            start, end = info.span
            assert blob[start:end] == as_bytes(sd[name])

    def test_metadata_kept(self, ck, tmp_path, opened):
        """`__metadata__` is kept for display and is not listed as a tensor."""
        meta = {"format": "pt", "base_model": "tiny-llama"}
        c = opened(ck.write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)}, metadata=meta))
        assert c.metadata == meta
        assert list(c.tensors) == ["w"]

    def test_zero_length_and_scalars(self, ck, tmp_path, opened):
        """Zero-length tensors and 0-dim scalars list and load in every dtype."""
        c = opened(ck.write_safetensors(tmp_path / "edge.safetensors", EDGE))
        assert_same_tensors(c, EDGE)
        assert c.tensors["scalar"].shape == () and c.tensors["scalar"].numel == 1
        assert c.tensors["empty"].numel == 0 and c.tensors["empty"].nbytes == 0

    def test_unaligned_header_loads(self, ck, tmp_path, opened):
        """A hand-written file whose data does not start on an 8-byte boundary still loads right."""
        header, data = ck.packed({"a": torch.arange(4.0), "b": torch.tensor([1.5, -2.0], dtype=torch.float64)})
        raw = ck.safetensors_bytes(json.dumps(header) + " ", data)  # odd header length
        (tmp_path / "odd.safetensors").write_bytes(raw)
        c = opened(tmp_path / "odd.safetensors")
        assert torch.equal(c.load("a"), torch.arange(4.0))
        assert torch.equal(c.load("b"), torch.tensor([1.5, -2.0], dtype=torch.float64))


class TestWellFormedHeaders:
    """Nearly every header is parsed and type-checked in one compiled pass; anything unusual goes the
    careful way, entry by entry. Both ways must read a file alike."""

    @staticmethod
    def both_ways(path, monkeypatch):
        from weightscope.sources.formats import safetensors as st

        quick = st.SafetensorsFile(str(path))
        with monkeypatch.context() as m:
            m.setattr(st, "read_well_formed", lambda *args: None)
            careful = st.SafetensorsFile(str(path))
        return quick, careful

    def test_real_files_read_alike(self, ck, tmp_path, monkeypatch):
        """Files from the safetensors library itself (metadata, every edge dtype and shape) go the
        quick way and read exactly as the careful way reads them."""
        from weightscope.sources.formats import safetensors as st

        sd = {**EDGE, **ck.llama_like(0, layers=1), "h": torch.ones(2, dtype=torch.float16)}
        path = ck.write_safetensors(tmp_path / "m.safetensors", sd, metadata={"format": "pt", "k": "v"})
        blob = path.read_bytes()
        length = int.from_bytes(blob[:8], "little")
        assert st.read_well_formed(blob[8:8 + length], str(path), 8 + length, len(blob) - 8 - length) is not None
        quick, careful = self.both_ways(path, monkeypatch)
        assert quick.tensors == careful.tensors and len(quick.tensors) == len(sd)
        assert quick.metadata == careful.metadata == {"format": "pt", "k": "v"}
        assert quick.notes == careful.notes == []

    @pytest.mark.parametrize("edit", [
        pytest.param(lambda h: h["b"].update(extra="x"), id="an extra field"),
        pytest.param(lambda h: h.update({'q"uote': h.pop("b")}), id="an escaped name"),
        pytest.param(lambda h: h.update(__metadata__={"n": 1}), id="metadata not strings"),
    ])
    def test_unusual_headers_go_the_careful_way(self, ck, tmp_path, monkeypatch, edit):
        """What the quick way does not vouch for is read the careful way, with the same result."""
        from weightscope.sources.formats import safetensors as st

        header, data = ck.packed({"a": torch.arange(4.0), "b": torch.ones(2, 2)})
        edit(header)
        text = json.dumps(header).encode()
        assert st.read_well_formed(text, "m", 8 + len(text), len(data)) is None
        (tmp_path / "m.safetensors").write_bytes(ck.safetensors_bytes(text.decode(), data))
        quick, careful = self.both_ways(tmp_path / "m.safetensors", monkeypatch)
        assert quick.tensors == careful.tensors and quick.notes == careful.notes

    def test_a_field_given_twice_is_refused(self, ck, tmp_path, opened):
        """A key repeated inside an entry would keep only its last value: the careful way names it."""
        entry = '{"dtype": "F32", "shape": [1], "shape": [1], "data_offsets": [0, 4]}'
        (tmp_path / "m.safetensors").write_bytes(ck.safetensors_bytes(f'{{"w": {entry}}}', b"\0" * 4))
        with pytest.raises(CheckpointError, match="duplicate key 'shape'"):
            opened(tmp_path / "m.safetensors")


class TestTorchZip:
    def test_lists_and_loads(self, ck, tmp_path, opened):
        """A zip-format torch.save file lists every tensor and reads each through the file's map."""
        sd = ck.llama_like(3)
        torch.save(sd, tmp_path / "pytorch_model.bin")
        c = opened(tmp_path / "pytorch_model.bin")
        assert c.format == "pytorch"
        assert all(info.span is not None for info in c.tensors.values())
        assert_same_tensors(c, sd)

    def test_bf16_and_edge_tensors(self, ck, tmp_path, opened):
        """bf16, zero-length, 0-dim, bool and int tensors load with the right values and bytes."""
        sd = {**EDGE, **ck.llama_like(4, layers=1, dtype=torch.bfloat16)}
        torch.save(sd, tmp_path / "m.pt")
        assert_same_tensors(opened(tmp_path / "m.pt"), sd)

    def test_strided_views(self, tmp_path, opened):
        """Transposed, sliced and strided views saved by torch.save load with their own values."""
        x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
        sd = {"x": x, "t": x.t(), "rows": x[1:3], "col": x[:, 2], "every_other": x[::2, ::3]}
        torch.save(sd, tmp_path / "views.pt")
        c = opened(tmp_path / "views.pt")
        assert_same_tensors(c, sd)
        assert all(info.tied_to is None for info in c.tensors.values()), "views are not ties"

    def test_tied_names_reported_once(self, ck, tmp_path, opened):
        """Two names sharing one storage are listed, the second as tied to the first, counted once."""
        sd = ck.tied(ck.llama_like(5))
        torch.save(sd, tmp_path / "tied.bin")
        c = opened(tmp_path / "tied.bin")
        assert c.tensors["lm_head.weight"].tied_to == "model.embed_tokens.weight"
        assert c.tensors["model.embed_tokens.weight"].tied_to is None
        assert sum(info.tied_to is not None for info in c.tensors.values()) == 1
        assert c.parameters == sum(t.numel() for n, t in sd.items() if n != "lm_head.weight")
        assert torch.equal(c.load("lm_head.weight"), sd["model.embed_tokens.weight"])

    def test_legacy_format_read_whole(self, ck, tmp_path, opened):
        """A legacy (non-zip) torch.save file opens, with a note that it is read whole."""
        sd = {**ck.llama_like(6, layers=1), **EDGE}
        torch.save(sd, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
        c = opened(tmp_path / "old.bin")
        assert c.format == "pytorch-legacy"
        assert any("legacy" in n and "read whole" in n for n in c.notes)
        assert_same_tensors(c, sd)

    def test_legacy_tied(self, ck, tmp_path, opened):
        """Ties are found in legacy files too."""
        torch.save(ck.tied(ck.llama_like(7, layers=1)), tmp_path / "old.bin", _use_new_zipfile_serialization=False)
        assert opened(tmp_path / "old.bin").tensors["lm_head.weight"].tied_to == "model.embed_tokens.weight"


def optimizer_state() -> dict:
    """A real Adam state dict after one step (tensors inside, integer keys)."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    return opt.state_dict()


NESTINGS = {  # how a training loop wraps the weights, where they are found, one line of what is not weights
    "model": (lambda sd: {"model": sd, "step": 10}, "model", "step: int 10"),
    "state_dict": (lambda sd: {"state_dict": sd, "hyper_parameters": {"lr": 0.1}}, "state_dict",
                   "hyper_parameters: dict of 1"),
    "model.state_dict": (lambda sd: {"model": {"state_dict": sd, "config": "tiny"}}, "model.state_dict",
                         "model.config: str 'tiny'"),
    "model_state_dict": (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": optimizer_state(),
                                     "epoch": 3}, "model_state_dict", "epoch: int 3"),
}


class TestTrainingCheckpoints:
    @pytest.mark.parametrize("nesting", list(NESTINGS))
    def test_opens_at_the_weights(self, ck, tmp_path, opened, nesting):
        """Weights nested by a training loop open at the weights; the rest is listed apart."""
        wrap, location, extra = NESTINGS[nesting]
        sd = ck.llama_like(8, layers=1)
        torch.save(wrap(sd), tmp_path / "checkpoint.pt")
        c = opened(tmp_path / "checkpoint.pt")
        assert_same_tensors(c, sd)
        assert f"{tmp_path / 'checkpoint.pt'}: weights found under '{location}'" in c.notes
        assert extra in c.extras

    def test_optimizer_and_epoch_are_extras(self, ck, tmp_path, opened):
        """Optimizer state and the epoch go to `extras`, never into the tensor names."""
        sd = ck.llama_like(9, layers=1)
        torch.save({"model_state_dict": sd, "optimizer_state_dict": optimizer_state(), "epoch": 3},
                   tmp_path / "ckpt.pt")
        c = opened(tmp_path / "ckpt.pt")
        assert set(c.tensors) == set(sd)
        assert any(e.startswith("optimizer_state_dict: dict") and "tensors" in e for e in c.extras)
        assert "epoch: int 3" in c.extras
        assert all("\n" not in e for e in c.extras)

    def test_non_tensor_entries_beside_weights(self, tmp_path, opened):
        """A state dict with a few non-tensor entries keeps its tensors and lists the others as extras."""
        torch.save({"w": torch.ones(2), "b": torch.zeros(2), "note": "v1"}, tmp_path / "m.pt")
        c = opened(tmp_path / "m.pt")
        assert set(c.tensors) == {"w", "b"}
        assert c.extras == ["note: str 'v1'"]

    def test_no_weights_is_an_error(self, tmp_path, opened):
        """A torch file without a state dict is a one-line error saying what it holds."""
        torch.save({"epoch": 3, "args": argparse.Namespace(lr=0.1).__dict__}, tmp_path / "trainer_state.pt")
        with pytest.raises(CheckpointError, match="no model weights found") as exc:
            opened(tmp_path / "trainer_state.pt")
        assert "\n" not in str(exc.value) and "trainer_state.pt" in str(exc.value)


class TestContentNotExtension:
    def test_safetensors_named_bin(self, ck, tmp_path, opened):
        """A safetensors file named x.bin is read as safetensors."""
        sd = ck.llama_like(10, layers=1)
        c = opened(ck.write_safetensors(tmp_path / "x.bin", sd))
        assert c.format == "safetensors"
        assert_same_tensors(c, sd)

    def test_torch_zip_named_safetensors(self, ck, tmp_path, opened):
        """A torch.save zip named model.safetensors is read as PyTorch."""
        sd = ck.llama_like(11, layers=1)
        torch.save(sd, tmp_path / "model.safetensors")
        c = opened(tmp_path / "model.safetensors")
        assert c.format == "pytorch"
        assert_same_tensors(c, sd)

    def test_legacy_named_anything(self, tmp_path, opened):
        """A legacy torch file is recognised by its pickle protocol byte, whatever its name."""
        torch.save({"w": torch.ones(3)}, tmp_path / "weights.safetensors", _use_new_zipfile_serialization=False)
        assert opened(tmp_path / "weights.safetensors").format == "pytorch-legacy"

    @pytest.mark.parametrize("content, why", [
        (b"hello, these are not weights\n", "unrecognised first bytes"),
        (b"GGUF\x03\x00\x00\x00", "tensor count"),  # a GGUF cut off inside its header
        (b"", "unrecognised first bytes"),
    ])
    def test_unknown_content_is_refused(self, tmp_path, opened, content, why):
        """Files that are not a known format are refused by content, with a one-line reason."""
        path = tmp_path / "model.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=why) as exc:
            opened(path)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)


class TestCheckpointApi:
    def test_unreadable_tensor_raises(self, ck, tmp_path, opened):
        """`load`/`raw` of a tensor in error raise `TensorUnreadable` with its reason."""
        header, data = ck.packed({"good": torch.ones(2), "bad": torch.ones(2)})
        header["bad"]["data_offsets"] = [0, 4]
        (tmp_path / "m.safetensors").write_bytes(ck.safetensors_bytes(header, data))
        c = opened(tmp_path / "m.safetensors")
        with pytest.raises(TensorUnreadable, match="bytes of data"):
            c.load("bad")
        with pytest.raises(TensorUnreadable):
            c.raw("bad")
        assert torch.equal(c.load("good"), torch.ones(2))

    def test_context_manager_closes(self, ck, tmp_path):
        """A checkpoint used as a context manager closes its maps, and loaded tensors stay valid."""
        from weightscope.sources.discover import open_checkpoint

        path = ck.write_safetensors(tmp_path / "m.safetensors", {"w": torch.arange(5.0)})
        with open_checkpoint(str(path)) as c:
            w = c.load("w").clone()
        assert torch.equal(w, torch.arange(5.0))
