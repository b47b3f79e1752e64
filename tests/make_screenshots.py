"""Write the README's screenshots: the real app on the demo pair, as SVG files in screenshots/.

    python3 tests/make_screenshots.py

Not a test (pytest does not collect it); run it after changing how the app looks.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
SIZE = (120, 40)
# file name: keys pressed after the scan has finished
VIEWS = {
    "changed-tensor.svg": ["n", "n", "n", "n"],
    "nan-tensor.svg": ["slash", *"up_proj", "enter", *["down"] * 13],
    "layer-summary.svg": ["n", "n", "n", "left", "left", "left"],
    "overview.svg": ["o", "down", "right", "right"],
    "spectrum.svg": ["n", "n", "n", "n", "v"],
    "change-map.svg": ["n", "n", "n", "n", "v", "v"],
}


async def shoot(base: str, tuned: str, name: str, keys: list[str]) -> None:
    from ui.helpers import open_app, settle

    app = open_app(base, tuned, use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.2)
        await settle(pilot)
        app.clear_notifications()
        await pilot.pause()
        app.save_screenshot(str(SCREENSHOTS / name))


def main() -> None:
    from weightscope.paths import cache_dir

    # A private result cache; the compiled loops keep theirs (compiling them takes half a minute).
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        from weightscope.demo import write_demo

        write_demo(Path(cache) / "demo")
        os.chdir(Path(cache) / "demo")  # relative paths: the title bar reads "A base   B finetune"
        SCREENSHOTS.mkdir(exist_ok=True)
        for name, keys in VIEWS.items():
            asyncio.run(shoot("base", "finetune", name, keys))
            print(SCREENSHOTS / name)


if __name__ == "__main__":
    main()
