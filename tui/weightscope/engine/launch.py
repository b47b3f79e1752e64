"""The engine process's first moments: its worker processes start before anything heavy is
imported here, so that they load their modules while the engine loads its own (on two cores,
loading them one after the other cost half a second before B began to open).

    python -m weightscope.engine.launch FD HELPERS QUIET
"""

from __future__ import annotations

import sys


def main(fd: int, helpers: int, quiet: bool) -> None:
    from weightscope.engine.client import start  # (light: the process and its pipe)

    workers = [start("weightscope.engine.worker", quiet)[1] for _ in range(helpers)]
    from weightscope.engine.server import main as serve

    serve(fd, workers, quiet)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1")
