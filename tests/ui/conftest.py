"""Fixtures for the app's tests: checkpoints to open, and a runner for `async def` tests.

The demo pair is written once per session into a temporary directory; tests open it by the
relative names `base` and `finetune` from inside that directory, so the title bar, and with
it every SVG snapshot, is the same on every machine.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from weightscope.demo import write_demo


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run `async def` tests in a fresh event loop (no pytest-asyncio needed for Pilot tests)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**arguments))
    return True


@pytest.fixture(autouse=True)
def ui_cache(tmp_path, monkeypatch):
    """The result cache (and anything else the app writes under XDG_CACHE_HOME) stays in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo pair, written once: `base/` and `finetune/` inside the returned directory."""
    root = tmp_path_factory.mktemp("demo")
    write_demo(root=root)
    return root


@pytest.fixture
def demo(demo_root, monkeypatch) -> tuple[str, str]:
    """The demo pair as relative paths (the working directory is the demo root for this test)."""
    monkeypatch.chdir(demo_root)
    return "base", "finetune"


@pytest.fixture
def pair(tmp_path, ck):
    """`pair(a_dict, b_dict)` writes `a.safetensors` and `b.safetensors` and returns their paths;
    `pair(a_dict)` writes only A."""

    def write(a: dict, b: dict | None = None, name: str = "") -> tuple[str, str | None]:
        path_a = ck.write_safetensors(tmp_path / f"{name}a.safetensors", a)
        path_b = ck.write_safetensors(tmp_path / f"{name}b.safetensors", b) if b is not None else None
        return str(path_a), str(path_b) if path_b is not None else None

    return write
