"""Snapshots of the overview and a matrix detail at 80×24 and 120×40 (pytest-textual-snapshot).

Regenerate after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`
and look at the report before committing.
"""

import pytest
from app_driver import wait_for_scan

SIZES = [(80, 24), (120, 40)]


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_overview(snap_compare, make_app, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=wait_for_scan)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matrix_detail(snap_compare, make_app, size):
    async def open_first_with_intruders(pilot):
        await wait_for_scan(pilot)
        await pilot.press("n", "enter")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=size, run_before=open_first_with_intruders)
