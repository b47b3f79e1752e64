"""A resized pair in the app: the detail pane shows its common part's figures and status and,
in plain words, the audit of the rows one side added; the change map marks where they begin."""

from __future__ import annotations

import torch

from .helpers import SIZE, open_app, record_notifications, screen_text, settle, static_text, wait_for

OLD, NEW, HIDDEN = 32, 8, 8


def grown(pair):
    """An embedding grown by 8 rows set to the mean of the old ones (old rows unchanged), beside a changed weight."""
    old = torch.randn(OLD, HIDDEN, generator=torch.Generator().manual_seed(0))
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    return pair({"embed": old, "w": w}, {"embed": torch.cat([old, old.mean(0, keepdim=True).expand(NEW, HIDDEN)]),
                                        "w": w + 1})


async def test_the_detail_pane_shows_the_common_part_and_the_added_rows(pair):
    app = open_app(*grown(pair))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.show_in_tree("embed")
        await settle(pilot)
        assert "shape changed" in static_text(app, "#detail-title")
        stats = static_text(app, "#detail-stats")
        assert f"common part [{OLD}, {HIDDEN}]: = identical" in stats
        assert f"rows {OLD}–{OLD + NEW - 1} added in B: {NEW} rows, none zero, none NaN/Inf, {NEW} duplicated" in stats
        assert "→ initialised as the mean of old rows" in stats
        assert "Δ = B − A" in stats and "rel L2" in stats  # the figures, over the common part
        assert static_text(app, "#detail-verdict").startswith(f"mismatched 0 / {OLD * HIDDEN}")

        await pilot.press("v", "v")  # the change map: the added rows below a rule
        await settle(pilot)
        lines = static_text(app, "#map").splitlines()
        assert lines[0].endswith("░ only in B")
        rule = next(k for k, line in enumerate(lines) if line.split() == ["only", "in", "B", "─" * HIDDEN])
        label, cells = lines[rule + 1].split()
        assert label.startswith(f"{OLD}–") and cells == "░" * HIDDEN  # the first added row, below the rule
        assert all("░" not in line for line in lines[2:rule])  # the old rows: their Δ


async def test_at_80x24_the_audit_is_in_sight(pair):
    app = open_app(*grown(pair))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.show_in_tree("embed")
        await settle(pilot)
        screen = screen_text(app)
        assert f"common part [{OLD}, {HIDDEN}]: = identical" in screen
        assert f"rows {OLD}–{OLD + NEW - 1} added in B" in screen and "mean of old rows" in screen


async def test_a_failed_resized_pass_speaks_and_the_pane_still_has_its_parts(pair, monkeypatch):
    """The scan's pass over a resized pair fails: a notification and the status line say so in one
    line; the pair's own detail works its parts out."""
    monkeypatch.setenv("WEIGHTSCOPE_FAULT", "resized")
    app = open_app(*grown(pair), use_cache=False)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        said = "resized failed: embed: RuntimeError: injected fault in resized ("
        await wait_for(pilot, lambda: any(n.startswith(said) for n in notes))
        await settle(pilot)
        assert static_text(app, "#status-line").startswith(said)
        app.show_in_tree("embed")
        await settle(pilot)
        assert f"common part [{OLD}, {HIDDEN}]: = identical" in static_text(app, "#detail-stats")
