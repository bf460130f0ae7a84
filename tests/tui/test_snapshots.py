"""Snapshots at fixed terminal sizes (pytest-textual-snapshot): the overview and a matrix in detail at
80×24 and 120×40, the overview with NO_COLOR, the help screen, the Mitigate view with an invalid λ.

Regenerate after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`
and look at the report before committing.
"""

import pytest
from app_driver import wait_for_scan
from textual.widgets import Input

from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.engine import Scan
from spectui.locations import sample_comparison

SIZES = [(80, 24), (120, 40)]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """Every snapshot reads the same fully cached scan: the status line says how much came from the
    cache, so a cache warmed or not by the tests before would change the picture."""
    root = tmp_path_factory.mktemp("snapshot-cache")
    Scan(open_comparison(*sample_comparison()), Cache(root), device="cpu").run()
    return root


@pytest.fixture
def make_app(make_app, warm):
    return lambda: make_app(cache=warm)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_overview(snap_compare, make_app, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=wait_for_scan)


@pytest.mark.slow
def test_overview_without_colour(snap_compare, make_app, monkeypatch):
    """NO_COLOR: every series, count and state still reads (markers and glyphs, not colour)."""
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=wait_for_scan)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matrix_detail(snap_compare, make_app, size):
    async def open_first_with_intruders(pilot):
        await wait_for_scan(pilot)
        await pilot.press("n", "enter")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=size, run_before=open_first_with_intruders)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, make_app, size):
    async def open_help(pilot):
        await wait_for_scan(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=size, run_before=open_help)


@pytest.mark.slow
def test_mitigate_with_an_invalid_lambda(snap_compare, make_app):
    async def type_a_bad_lambda(pilot):
        await wait_for_scan(pilot)
        await pilot.press("n", "s")
        refit = pilot.app.screen.query_one("#refit")
        for _ in range(300):
            if "error up to" in str(refit.render()):
                break
            await pilot.pause(0.1)
        await pilot.press("l", "end", *["backspace"] * 4, "3", "enter")
        for field in pilot.app.screen.query(Input):  # a blinking cursor would make the picture a matter of timing
            field.cursor_blink = False
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=type_a_bad_lambda)
