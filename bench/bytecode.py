"""The package's bytecode, compiled before a bench times the app's start: as any run after the
first has it (where PYTHONDONTWRITEBYTECODE is set, Python would compile the package at every
start; `./run` compiles it too)."""

import compileall
import os

TUI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tui")


def compile_package(tui: str = TUI) -> None:
    """`tui`: the folder that holds the package (this tree's by default, or a baseline's)."""
    compileall.compile_dir(os.path.join(tui, "weightscope"), quiet=1)
