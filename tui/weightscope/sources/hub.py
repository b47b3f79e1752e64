"""Hugging Face model ids (`org/name`, `org/name@revision`) found in the local hub cache.

Only the cache is consulted (`local_files_only=True`): weightscope never downloads. An id is
tried only for a path that does not exist, so a local directory always wins.
"""

from __future__ import annotations

import os
import re

from weightscope.sources.errors import CheckpointError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def looks_like_id(path: str) -> bool:
    """`org/name` or `org/name@revision` that names nothing on disk."""
    return REPO_ID.fullmatch(path) is not None and not os.path.lexists(path)


def cache_dir() -> str:
    """The hub cache as huggingface_hub finds it, read now: the library reads HF_HUB_CACHE,
    HF_HOME and XDG_CACHE_HOME once, when it is imported."""
    env, expand = os.environ, lambda p: os.path.expandvars(os.path.expanduser(p))
    home = expand(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                  "huggingface")))
    hub = env.get("HF_HUB_CACHE", env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))
    return expand(hub)


def resolve(name: str) -> tuple[str, str]:
    """The snapshot directory of a cached model, and the repository folder its files link into.

    Raises:
        CheckpointError: not in the cache (or not a valid id), in one line.
    """
    from huggingface_hub import snapshot_download

    repo_id, _, revision = name.partition("@")
    cache = cache_dir()
    try:
        snapshot = snapshot_download(repo_id, revision=revision or None, cache_dir=cache, local_files_only=True)
    except (OSError, ValueError):  # not cached or incomplete (FileNotFoundError), or an invalid id
        raise CheckpointError(name, f"no such file or directory, and not in the Hugging Face cache at {cache} "
                                    "(weightscope does not download)") from None
    return snapshot, os.path.dirname(os.path.dirname(snapshot))
