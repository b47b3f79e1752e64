"""Where weightscope keeps its files: the user's cache directory (XDG)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/weightscope`, else `~/.cache/weightscope` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weightscope"
