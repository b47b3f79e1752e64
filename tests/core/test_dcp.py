"""torch.distributed.checkpoint directories, written by `torch.distributed.checkpoint.save`.

DCP saves in a single process without a process group, so every directory here is the real
thing; hostile metadata is the real metadata re-pickled with one field changed, or a pickle
that calls a function.
"""

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from weightscope.sources.checkpoint import TensorUnreadable
from weightscope.sources.errors import CheckpointError
from weightscope.sources.formats.dcp import read_metadata


def save(state_dict: dict, directory) -> str:
    with warnings.catch_warnings():  # "no process group: assuming a single process"
        warnings.simplefilter("ignore")
        dcp.save(state_dict, checkpoint_id=str(directory))
    return str(directory)


def trained(sd: dict[str, torch.Tensor]) -> dict:
    """AdamW's state after one step over the tensors of `sd` (as nn.Parameters)."""
    params = [torch.nn.Parameter(t.clone()) for t in sd.values()]
    optimizer = torch.optim.AdamW(params)
    sum((p * p).sum() for p in params).backward()
    optimizer.step()
    return optimizer.state_dict()


def rewrite_metadata(directory, change) -> None:
    """Apply `change` to the directory's metadata (read safely) and pickle it back."""
    path = os.path.join(directory, ".metadata")
    metadata = read_metadata(path)
    change(metadata)
    with open(path, "wb") as f:
        pickle.dump(metadata, f)


def storage_entry(directory, fqn):
    path = os.path.join(directory, ".metadata")
    return next(info for index, info in read_metadata(path).storage_data.items() if index.fqn == fqn)


class TestDcp:
    def test_compares_identical_to_its_state_dict(self, ck, tmp_path, diff):
        """A training save ({"model", "optim", "step"}) compares identical, name by name, to the
        model's state dict written as safetensors; optimizer state is listed apart."""
        sd = ck.llama_like(0)
        directory = save({"model": sd, "optim": trained(sd), "step": 7}, tmp_path / "step-7")
        d = diff(ck.write_safetensors(tmp_path / "model.safetensors", sd), directory)
        assert d.b.format == "dcp"
        assert d.statuses == dict.fromkeys(sd, "identical")
        assert d.alignment.notes == []
        assert f"{directory}: weights found under 'model'" in d.b.notes
        adam = 3 * len(sd)  # step, exp_avg and exp_avg_sq per parameter
        assert d.b.extras[0].startswith(f"optim: optimizer state, {adam} tensors, ")  # and param_groups' values
        assert d.b.extras[1:] == ["step: 1 other value"]
        assert d.b.files == [os.path.join(directory, ".metadata"), os.path.join(directory, "__0_0.distcp")]
        assert d.b.parameters == sum(t.numel() for t in sd.values())

    def test_flat_save_with_optimizer_beside_it(self, ck, tmp_path, opened):
        """A flat save (torchtitan's: model keys at the top, "optimizer" beside them) keeps the names."""
        sd = ck.llama_like(1, layers=1)
        c = opened(save({**sd, "optimizer": trained(sd)}, tmp_path / "ckpt"))
        assert set(c.tensors) == set(sd) and c.notes == []
        assert c.extras[0].startswith("optimizer: optimizer state, ")
        for name, tensor in sd.items():
            assert torch.equal(c.load(name), tensor)

    def test_nested_keys_are_flattened_with_dots(self, tmp_path, opened):
        """Nested dicts and lists become dotted names; dtypes, scalars and empty tensors keep their values."""
        state = {"encoder": {"layers": [{"w": torch.randn(3, 2)}, {"w": torch.randn(2)}]},
                 "scale": torch.tensor(0.5, dtype=torch.bfloat16), "none": torch.zeros(0, 4),
                 "ids": torch.arange(5, dtype=torch.int32)}
        c = opened(save(state, tmp_path / "nested"))
        expected = {"encoder.layers.0.w": state["encoder"]["layers"][0]["w"],
                    "encoder.layers.1.w": state["encoder"]["layers"][1]["w"],
                    "scale": state["scale"], "none": state["none"], "ids": state["ids"]}
        assert set(c.tensors) == set(expected)
        for name, tensor in expected.items():
            info = c.tensors[name]
            assert (info.dtype, info.shape) == (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
            loaded = c.load(name)
            assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor)
            assert c.raw(name).tobytes() == tensor.reshape(-1).view(torch.uint8).numpy().tobytes()

    def test_tensor_saved_in_chunks_is_assembled(self, tmp_path, opened):
        """A tensor stored as row blocks in separate blobs (as FSDP ranks save it) reads whole."""
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata

        top, bottom = torch.randn(2, 4), torch.randn(2, 4)
        directory = save({"top": top, "bottom": bottom}, tmp_path / "ckpt")

        def as_one_sharded_tensor(metadata):
            blobs = {index.fqn: info for index, info in metadata.storage_data.items()}
            rows = [torch.Size([0, 0]), torch.Size([2, 0])]
            metadata.state_dict_metadata = {"w": TensorStorageMetadata(
                metadata.state_dict_metadata["top"].properties, torch.Size([4, 4]),
                [ChunkStorageMetadata(offsets, torch.Size([2, 4])) for offsets in rows])}
            metadata.storage_data = {MetadataIndex("w", rows[0], 0): blobs["top"],
                                     MetadataIndex("w", rows[1], 1): blobs["bottom"]}
            metadata.planner_data = {"w": ("w",)}
        rewrite_metadata(directory, as_one_sharded_tensor)
        c = opened(directory)
        assert c.tensors["w"].shape == (4, 4)
        assert torch.equal(c.load("w"), torch.cat([top, bottom]))

    def test_listing_reads_no_tensor_data(self, ck, tmp_path, opened):
        """The tensor list comes from `.metadata` alone: emptied data files do not stop it."""
        sd = ck.llama_like(2, layers=1)
        directory = save(sd, tmp_path / "ckpt")
        open(os.path.join(directory, "__0_0.distcp"), "wb").close()
        c = opened(directory)
        assert set(c.tensors) == set(sd)
        assert all("stored bytes end at" in t.error for t in c.tensors.values())


class TestHostileMetadata:
    def test_pickle_calling_a_function_is_refused(self, ck, tmp_path, opened):
        """A `.metadata` that would run code is refused in one line, and the code never runs."""
        directory = save(ck.llama_like(0, layers=1), tmp_path / "ckpt")
        marker = tmp_path / "ran"

        class Payload:
            def __reduce__(self):
                return os.system, (f"touch {marker}",)

        with open(os.path.join(directory, ".metadata"), "wb") as f:
            pickle.dump(Payload(), f)
        with pytest.raises(CheckpointError, match="refused posix.system: not part of DCP metadata") as exc:
            opened(directory)
        assert "\n" not in str(exc.value) and not marker.exists()

    def test_not_dcp_metadata_is_refused(self, tmp_path, opened):
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
        with pytest.raises(CheckpointError, match="not DCP metadata"):
            opened(tmp_path / "ckpt")

    @pytest.mark.parametrize("field, value, why", [
        ("relative_path", "../elsewhere.distcp", "named by .metadata but outside the checkpoint directory"),
        ("relative_path", "missing.distcp", "No such file or directory"),
        ("offset", 1 << 40, "stored bytes end at"),
        ("length", 3, "3 stored bytes cannot hold 16 bytes of data"),
        ("transform_descriptors", ["zstd"], "stored through transforms"),
    ])
    def test_bad_storage_entry_spoils_only_its_tensor(self, tmp_path, opened, field, value, why):
        """A chunk stored outside the directory, past a file's end, in too few bytes or through a
        transform marks its tensor unreadable; the other tensors read."""
        directory = save({"bad": torch.ones(4), "good": torch.arange(3.0)}, tmp_path / "ckpt")
        (tmp_path / "elsewhere.distcp").write_bytes(bytes(4096))
        rewrite_metadata(directory, lambda m: setattr(storage_entry_of(m, "bad"), field, value))
        c = opened(directory)
        assert why in c.tensors["bad"].error and "\n" not in c.tensors["bad"].error
        with pytest.raises(TensorUnreadable):
            c.load("bad")
        assert torch.equal(c.load("good"), torch.arange(3.0))

    def test_chunks_that_do_not_tile_the_tensor(self, tmp_path, opened):
        directory = save({"w": torch.ones(4, 2)}, tmp_path / "ckpt")

        def grow(metadata):
            metadata.state_dict_metadata["w"].size = torch.Size([8, 2])
        rewrite_metadata(directory, grow)
        assert "chunks hold 8 elements of 16" in opened(directory).tensors["w"].error

    def test_damaged_blob_is_an_error_for_that_pair(self, ck, tmp_path, diff):
        """Bytes of one stored blob overwritten: that tensor is `error` with a one-line reason."""
        sd = {"a": torch.ones(64), "b": torch.full((64,), 2.0)}
        directory = save(sd, tmp_path / "ckpt")
        entry = storage_entry(directory, "a")
        with open(os.path.join(directory, entry.relative_path), "r+b") as f:
            f.seek(entry.offset)
            f.write(b"\xff" * 64)
        d = diff(ck.write_safetensors(tmp_path / "m.safetensors", sd), directory)
        assert d.statuses == {"a": "error", "b": "identical"}
        error = d.result("a").error
        assert "refused to unpickle (weights_only): Unsupported operand 255" in error
        assert "\n" not in error and str(directory) in error


def storage_entry_of(metadata, fqn):
    return next(info for index, info in metadata.storage_data.items() if index.fqn == fqn)


def test_pickle_that_is_not_dcp_is_a_plain_directory(ck, tmp_path, opened):
    """A `.metadata` file that is not a pickle does not make a directory DCP."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").write_text("{}")
    ck.write_safetensors(tmp_path / "ckpt" / "model.safetensors", {"w": torch.ones(2)})
    assert opened(tmp_path / "ckpt").format == "safetensors"
