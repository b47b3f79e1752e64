"""The core and the command line load neither the UI toolkits nor torch until a command needs them.

Each check runs in a fresh interpreter: this pytest process has long since imported torch.
"""

import json
import os
import shutil
import subprocess
import sys

HEAVY = ("textual", "rich", "torch")


def python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON document, returned here."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def loaded(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_core_and_cli_import_light():
    """Importing the core packages, their modules and the CLI, and building the parser, loads no heavy module."""
    modules = python(
        "import json, sys\n"
        "import weightscope.sources, weightscope.sources.discover, weightscope.compare.align\n"
        "import weightscope.compare.scan, weightscope.report.diff, weightscope.cli\n"
        "weightscope.cli.build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    assert "weightscope.sources.discover" in modules
    assert loaded(modules) == []


def test_help_is_light():
    """`weightscope --help` exits 0 and imports none of textual, rich or torch (per -X importtime)."""
    script = shutil.which("weightscope", path=os.path.dirname(sys.executable)) or shutil.which("weightscope")
    assert script, "the console script is installed (pip install -e .)"
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0
    assert "diff" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "weightscope.cli" in imported, "importtime output was read"
    assert loaded(imported) == []


def test_listing_safetensors_does_not_import_torch(ck, tmp_path):
    """Opening a sharded safetensors checkpoint and listing every name, dtype and shape needs no torch."""
    sd = ck.llama_like(0)
    directory = ck.write_sharded_safetensors(tmp_path / "ckpt", sd, shards=3)
    listing = python(
        "import json, sys\n"
        "from weightscope.sources.discover import open_checkpoint\n"
        f"c = open_checkpoint({str(directory)!r})\n"
        "names = {n: [t.dtype, list(t.shape)] for n, t in c.tensors.items()}\n"
        "print(json.dumps({'names': names, 'heavy': [m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r}]}}))\n")
    assert listing["heavy"] == []
    assert listing["names"] == {n: ["float32", list(t.shape)] for n, t in sd.items()}


APP = r"""
import asyncio, json, sys
from weightscope.engine.protocol import Job
from weightscope.ui.app import WeightscopeApp

async def main():
    app = WeightscopeApp(Job(sys.argv[1], sys.argv[2], use_cache=False))
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(3000):
            await pilot.pause(0.01)
            if app.scan_done:
                break
        await pilot.press("right", "down")  # lm_head.weight: its figures and histograms
        for _ in range(3000):
            await pilot.pause(0.01)
            if app.details:
                break
        assert app.scan_done and app.details, "the app never settled"
        await pilot.press("v")  # its spectrum: torch, in the engine
        for _ in range(3000):
            await pilot.pause(0.01)
            if app.figures:
                break
        assert app.figures, "no spectrum came"
    print(json.dumps(sorted(sys.modules)))

asyncio.run(main())
"""


def test_the_app_process_does_no_heavy_work(ck, tmp_path):
    """The app's own interpreter draws and asks: after a whole scan, a tensor's figures and a
    spectrum, it has loaded neither the compiled loops (numba) nor torch; the engine has."""
    sd = ck.llama_like(0)
    a = ck.write_safetensors(tmp_path / "a.safetensors", sd)
    b = ck.write_safetensors(tmp_path / "b.safetensors", {n: t * 1.01 for n, t in sd.items()})
    done = subprocess.run([sys.executable, "-c", APP, str(a), str(b)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "textual" in modules and "weightscope.ui.app" in modules
    assert [m for m in modules if m.split(".")[0] in ("numba", "torch", "llvmlite")] == []


def test_the_run_apps_first_screen_needs_textual_alone():
    """The run app's module, the engine's client and the job's messages load neither numpy nor
    the run's tables: its first screen is drawn before them (they come with the run's catalog)."""
    modules = python(
        "import json, sys\n"
        "import weightscope.cli, weightscope.engine.client, weightscope.sources.runs\n"
        "from weightscope.engine.protocol import RunJob\n"
        "import weightscope.ui.run_app\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    assert "textual.app" in modules
    assert [m for m in modules if m.split(".")[0] in ("numpy", "torch", "plotext")] == []
    first_screen = {"weightscope.ui.widgets", "weightscope.ui.widgets.key_bar"}  # (Textual alone)
    assert not [m for m in modules if m.startswith(("weightscope.compare.run_plan", "weightscope.compare.run_results",
                                                    "weightscope.ui.widgets")) and m not in first_screen]


FIRST_SCREEN = r"""
import asyncio, json, sys
import weightscope.ui.app as app_module
from weightscope.engine.protocol import Job

plots_loaded_before = []
load_plots = app_module.load_plots

def loading_plots():
    plots_loaded_before.append("plotext" in sys.modules)
    load_plots()

app_module.load_plots = loading_plots

async def main():
    app = app_module.WeightscopeApp(Job(sys.argv[1], sys.argv[2], use_cache=False))
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(3000):
            await pilot.pause(0.01)
            if plots_loaded_before:
                break
    print(json.dumps(plots_loaded_before))

asyncio.run(main())
"""


def test_the_plots_load_after_the_pair_apps_first_screen(ck, tmp_path):
    """The plots' modules (plotext, a tenth of a second) load in a thread once the first screen is
    drawn, not before it: nothing at start asks for the plots."""
    a = ck.write_safetensors(tmp_path / "a.safetensors", ck.llama_like(0))
    done = subprocess.run([sys.executable, "-c", FIRST_SCREEN, str(a), str(a)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False]
