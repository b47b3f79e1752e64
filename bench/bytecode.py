"""The package's bytecode, compiled before a bench times the app's start: as any run after the
first has it (where PYTHONDONTWRITEBYTECODE is set, Python would compile the package at every
start; `./run` compiles it too)."""

import compileall
import os

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tui", "weightscope")


def compile_package() -> None:
    compileall.compile_dir(PACKAGE, quiet=1)
