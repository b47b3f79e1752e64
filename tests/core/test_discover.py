"""From a directory to a checkpoint: shards, indexes, training output directories."""

import argparse
import json
import random

import pytest
import torch

from weightscope.sources.errors import CheckpointError


def values_match(checkpoint, sd):
    return set(checkpoint.tensors) == set(sd) and all(torch.equal(checkpoint.load(n), t) for n, t in sd.items())


class TestSharded:
    def test_sharded_safetensors(self, ck, tmp_path, opened):
        """An indexed safetensors directory opens every shard, in index order, with every tensor."""
        sd = ck.llama_like(0)
        c = opened(ck.write_sharded_safetensors(tmp_path / "ckpt", sd, shards=3))
        assert c.format == "safetensors"
        assert [p.rsplit("/", 1)[1] for p in c.files] == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
        assert values_match(c, sd)
        assert c.metadata == {"format": "pt"}
        assert not c.notes

    def test_sharded_bin(self, ck, tmp_path, opened):
        """An indexed .bin directory opens every shard with every tensor."""
        sd = ck.llama_like(1)
        c = opened(ck.write_sharded_bin(tmp_path / "ckpt", sd, shards=2))
        assert c.format == "pytorch"
        assert len(c.files) == 2
        assert values_match(c, sd)

    def test_files_the_index_does_not_name_are_ignored(self, ck, tmp_path, opened):
        """A weights file beside the shards that the index does not name is ignored, with a note."""
        sd = ck.llama_like(2)
        directory = ck.write_sharded_safetensors(tmp_path / "ckpt", sd)
        ck.write_safetensors(directory / "stray.safetensors", {"stray.weight": torch.ones(3)})
        c = opened(directory)
        assert "stray.weight" not in c.tensors
        assert not any("stray" in f for f in c.files)
        assert any("ignored 1 weights files the index does not name: stray.safetensors" in n for n in c.notes)
        assert values_match(c, sd)

    def test_tensors_the_index_assigns_elsewhere_are_ignored(self, ck, tmp_path, opened):
        """A shard holding a name the index assigns to another shard: the index wins, with a note."""
        sd = {"a": torch.ones(2), "b": torch.zeros(2)}
        directory = tmp_path / "ckpt"
        directory.mkdir()
        ck.write_safetensors(directory / "s1.safetensors", {"a": sd["a"], "b": torch.full((2,), 9.0)})
        ck.write_safetensors(directory / "s2.safetensors", {"b": sd["b"]})
        ck.write_index(directory / "model.safetensors.index.json", {"a": "s1.safetensors", "b": "s2.safetensors"})
        c = opened(directory)
        assert c.tensors["b"].file.endswith("s2.safetensors")
        assert torch.equal(c.load("b"), sd["b"])
        assert any("ignored 1 tensors the index does not assign" in n for n in c.notes)

    def test_name_missing_from_its_shard(self, ck, tmp_path, opened):
        """A name the index assigns to a shard that lacks it is listed as an error; the rest reads."""
        directory = tmp_path / "ckpt"
        directory.mkdir()
        ck.write_safetensors(directory / "s1.safetensors", {"a": torch.ones(2)})
        ck.write_index(directory / "model.safetensors.index.json", {"a": "s1.safetensors", "ghost": "s1.safetensors"})
        c = opened(directory)
        assert "has no ghost" in c.tensors["ghost"].error
        assert torch.equal(c.load("a"), torch.ones(2))

    def test_both_indexes_prefer_safetensors(self, ck, tmp_path, opened):
        """With both a safetensors and a .bin index, the safetensors shards are used, and the user is told."""
        sd = ck.llama_like(3)
        directory = ck.write_sharded_safetensors(tmp_path / "ckpt", sd)
        ck.write_sharded_bin(directory, sd)
        c = opened(directory)
        assert c.format == "safetensors"
        assert all(f.endswith(".safetensors") for f in c.files)
        assert any("pytorch_model.bin.index.json" in n and "safetensors weights are used" in n for n in c.notes)

    @pytest.mark.parametrize("index, why", [
        ("{not json", "invalid JSON"),
        ('{"weight_map": {"a": "s.safetensors", "a": "s.safetensors"}}', "duplicate key 'a'"),
        ('{"metadata": {}}', "no weight_map"),
        ('{"weight_map": {"a": 3}}', "no weight_map"),
        ("[1, 2]", "no weight_map"),
    ])
    def test_bad_index(self, ck, tmp_path, opened, index, why):
        """An index that is not valid JSON, repeats a key or has no weight_map is a one-line error."""
        directory = tmp_path / "ckpt"
        directory.mkdir()
        ck.write_safetensors(directory / "s.safetensors", {"a": torch.ones(1)})
        (directory / "model.safetensors.index.json").write_text(index)
        with pytest.raises(CheckpointError, match=why) as exc:
            opened(directory)
        assert "model.safetensors.index.json" in str(exc.value) and "\n" not in str(exc.value)


class TestUnindexedDirectories:
    def test_directory_with_one_file(self, ck, tmp_path, opened):
        """A directory holding one weights file (and a config) opens that file."""
        sd = ck.llama_like(4)
        directory = tmp_path / "ckpt"
        directory.mkdir()
        ck.write_safetensors(directory / "model.safetensors", sd)
        (directory / "config.json").write_text('{"model_type": "llama"}')
        c = opened(directory)
        assert c.files == [str(directory / "model.safetensors")]
        assert values_match(c, sd)
        assert any("not weights: config.json" in n for n in c.notes)

    def test_several_files_without_index(self, ck, tmp_path, opened):
        """Several weights files and no index: all are read, and the user is told."""
        directory = tmp_path / "ckpt"
        directory.mkdir()
        ck.write_safetensors(directory / "part1.safetensors", {"a": torch.ones(2)})
        ck.write_safetensors(directory / "part2.safetensors", {"b": torch.zeros(2)})
        c = opened(directory)
        assert set(c.tensors) == {"a", "b"}
        assert any("no index file; reading all 2" in n for n in c.notes)

    def test_training_output_directory(self, ck, tmp_path, opened):
        """A Trainer output directory: safetensors weights are picked; training state and other files are skipped, each said."""
        sd = ck.llama_like(5)
        directory = tmp_path / "checkpoint-500"
        directory.mkdir()
        ck.write_safetensors(directory / "model.safetensors", sd)
        torch.save(sd, directory / "pytorch_model.bin")
        (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
        (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
        torch.save(argparse.Namespace(learning_rate=1e-4).__dict__, directory / "training_args.bin")
        model = torch.nn.Linear(2, 2)
        torch.save(torch.optim.AdamW(model.parameters()).state_dict(), directory / "optimizer.pt")
        torch.save({"python": random.getstate()[1][:4], "cpu": torch.get_rng_state()}, directory / "rng_state.pth")
        torch.save({"last_epoch": 3, "_step_count": 4}, directory / "scheduler.pt")

        c = opened(directory)
        assert c.format == "safetensors"
        assert c.files == [str(directory / "model.safetensors")]
        assert values_match(c, sd)
        for note in ("skipped optimizer.pt: optimizer state",
                     "skipped rng_state.pth: random number generator state",
                     "skipped scheduler.pt: learning-rate scheduler state",
                     "skipped training_args.bin: training arguments",
                     "skipped 2 files that are not weights: config.json, tokenizer.json",
                     "both safetensors and .bin weights present; using safetensors, skipped pytorch_model.bin"):
            assert note in c.notes

    def test_training_directory_with_bin_only(self, ck, tmp_path, opened):
        """With only .bin weights beside optimizer.pt and friends, the .bin is picked, never the optimizer."""
        sd = ck.llama_like(6)
        directory = tmp_path / "run"
        directory.mkdir()
        torch.save(sd, directory / "pytorch_model.bin")
        torch.save({"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []}, directory / "optimizer.pt")
        c = opened(directory)
        assert c.format == "pytorch"
        assert c.files == [str(directory / "pytorch_model.bin")]
        assert values_match(c, sd)

    def test_json_with_a_brace_at_byte_8_is_not_weights(self, ck, tmp_path, opened):
        """Compact JSON like `{"name":{...` (a `{` where safetensors has one) is not taken for weights."""
        sd = ck.llama_like(7, layers=1)
        torch.save(sd, tmp_path / "pytorch_model.bin")
        (tmp_path / "tokenizer_config.json").write_text('{"name":{"x":1}}')
        c = opened(tmp_path)
        assert c.format == "pytorch"
        assert values_match(c, sd)
        assert "skipped 1 files that are not weights: tokenizer_config.json" in c.notes

    def test_directory_without_weights(self, tmp_path, opened):
        """A directory with no weights file is a one-line error naming it."""
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(CheckpointError, match="no weights files") as exc:
            opened(tmp_path)
        assert str(tmp_path) in str(exc.value)

    def test_missing_path(self, tmp_path, opened):
        """A path that does not exist is a one-line error naming it."""
        with pytest.raises(CheckpointError, match="No such file") as exc:
            opened(tmp_path / "nope.safetensors")
        assert "nope.safetensors" in str(exc.value) and "\n" not in str(exc.value)
