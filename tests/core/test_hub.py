"""Hugging Face ids resolved from a hub cache laid out as huggingface_hub lays it out.

The cache is built by hand in tmp_path: `models--org--name/blobs/<sha256>` holding the
bytes, `snapshots/<commit>/<file>` as relative symlinks to them, and `refs/<branch>` holding
the commit. HF_HUB_CACHE points at it; nothing touches the network.
"""

import hashlib
import os

import pytest
import torch

from weightscope.cli import main
from weightscope.sources import hub
from weightscope.sources.errors import CheckpointError

MAIN, V2 = "a" * 40, "b" * 40


def cache_repo(cache, repo_id: str, directory, commit: str, refs=("main",)) -> str:
    """Put every file of `directory` into the cache as snapshot `commit` of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(directory.iterdir()):
        content = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return str(snapshot)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.chdir(tmp_path)  # ids must not also name local paths
    return path


@pytest.fixture
def models(ck, tmp_path, cache):
    """org/base on main (sharded), org/base@v2 and org/base-ft on main (single files)."""
    base, tuned = ck.llama_like(0), ck.llama_like(0)
    tuned["model.layers.1.mlp.up_proj.weight"] = tuned["model.layers.1.mlp.up_proj.weight"] + 1
    ck.write_sharded_safetensors(tmp_path / "src-base", base, shards=2)
    (tmp_path / "src-v2").mkdir()
    ck.write_safetensors(tmp_path / "src-v2" / "model.safetensors", {"w": torch.ones(2)})
    (tmp_path / "src-ft").mkdir()
    ck.write_safetensors(tmp_path / "src-ft" / "model.safetensors", tuned)
    cache_repo(cache, "org/base", tmp_path / "src-base", MAIN)
    cache_repo(cache, "org/base", tmp_path / "src-v2", V2, refs=("v2",))
    cache_repo(cache, "org/base-ft", tmp_path / "src-ft", MAIN)
    return base, tuned


class TestResolve:
    def test_id_opens_the_main_snapshot(self, models, cache, opened):
        """`org/name` opens refs/main's snapshot, a sharded index whose shards link into blobs/."""
        base, _ = models
        c = opened("org/base")
        assert c.path == "org/base" and c.format == "safetensors"
        assert set(c.tensors) == set(base) and not any(t.error for t in c.tensors.values())
        assert c.notes[0] == f"org/base: from the Hugging Face cache, {cache}/models--org--base/snapshots/{MAIN}"
        assert torch.equal(c.load("model.norm.weight"), base["model.norm.weight"])

    @pytest.mark.parametrize("revision", ["v2", V2])
    def test_revision_by_branch_or_commit(self, models, opened, revision):
        assert list(opened(f"org/base@{revision}").tensors) == ["w"]

    def test_diff_of_two_ids(self, models, capsys):
        """`weightscope diff org/name org/name-ft` compares the two cached models."""
        base, _ = models
        assert main(["diff", "org/base", "org/base-ft", "--no-cache"]) == 1
        out = capsys.readouterr().out
        assert out.splitlines()[0].startswith("verdict: ")  # the verdict first, then the sides
        assert any(line.startswith("A  org/base  safetensors, 2 files") for line in out.splitlines())
        assert out.splitlines()[-1] == f"summary: {len(base) - 1} identical, 1 changed"

    def test_hf_home_when_no_hub_cache_is_set(self, models, cache, tmp_path, monkeypatch, opened):
        """Without HF_HUB_CACHE, the cache is $HF_HOME/hub, read when the id is resolved."""
        monkeypatch.delenv("HF_HUB_CACHE")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        (tmp_path / "home").mkdir()
        os.rename(cache, tmp_path / "home" / "hub")
        assert hub.cache_dir() == str(tmp_path / "home" / "hub")
        assert opened("org/base-ft").format == "safetensors"

    def test_local_path_wins(self, models, ck, tmp_path, opened):
        """A directory that exists under the id's name is opened, not the cache."""
        (tmp_path / "org" / "base").mkdir(parents=True)
        ck.write_safetensors(tmp_path / "org" / "base" / "m.safetensors", {"local": torch.ones(1)})
        assert list(opened("org/base").tensors) == ["local"]


class TestNotCached:
    @pytest.mark.parametrize("name", ["org/missing", "org/base@no-such-branch", f"org/base@{'c' * 40}"])
    def test_one_line_error(self, models, cache, opened, name):
        with pytest.raises(CheckpointError) as exc:
            opened(name)
        assert str(exc.value) == (f"{name}: no such file or directory, and not in the Hugging Face cache at {cache} "
                                  "(weightscope does not download)")

    def test_cli_exit_2(self, models, capsys):
        assert main(["diff", "org/base", "org/missing"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [err[0]] and "org/missing: no such file or directory, and not in the Hugging Face cache" in err[0]

    def test_paths_that_are_not_ids_are_not_looked_up(self, cache, opened):
        """A missing path that cannot be an id (absolute, three parts) gets the plain file error."""
        for path in ("/nonexistent/model", "a/b/c"):
            with pytest.raises(CheckpointError, match="No such file or directory"):
                opened(path)
