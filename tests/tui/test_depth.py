"""Deep models in the overview (issue 13, depth): on generated 32- and 80-layer Llama-style models
(tiny widths, so a scan takes seconds) the grid scrolls with the cursor in view and the totals row
pinned, has per-layer and per-module totals that follow k and ε, and the 560-row list re-sorts
in place instead of re-creating its rows. And the overview survives an app that closes while it
mounts (a --serve tab closed at once)."""

from pathlib import Path

import pytest
from app_driver import wait_for_scan
from models import lora_model, save_adapter, tiny_llama
from textual import messages
from textual.geometry import Region

from spectui.tui import app as app_module
from spectui.tui.app import SpectuiApp
from spectui.tui.widgets.matrix_list import MatrixList
from spectui.tui.widgets.overview_grid import TOTAL, OverviewGrid

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def deep(root: Path, layers: int) -> tuple[str, list[str]]:
    """A `layers`-deep Llama of width 16 and a LoRA on all seven of its projections."""
    base = tiny_llama(hidden=16, layers=layers)
    base.save_pretrained(root / "base")
    save_adapter(lora_model(base, r=2, lora_alpha=4, target_modules=MODULES), root / "lora", base_ref="../base")
    return str(root / "base"), [str(root / "lora")]


@pytest.fixture(scope="module")
def deep32(tmp_path_factory):
    return deep(tmp_path_factory.mktemp("deep32"), 32)


@pytest.fixture(scope="module")
def deep80(tmp_path_factory):
    return deep(tmp_path_factory.mktemp("deep80"), 80)


def visible(grid: OverviewGrid) -> list[str]:
    """The grid's lines as shown now (the rows scrolled into view)."""
    return [strip.text for strip in grid.render_lines(Region(0, 0, grid.size.width, grid.size.height))]


def first_words(grid: OverviewGrid) -> list[str]:
    """The first word of each line the grid shows now (the rows scrolled into view), after the focus bar."""
    return [(line.lstrip("▌").split() or [""])[0] for line in visible(grid)]


def count(grid: OverviewGrid, row: str, column: str) -> int:
    return int(grid.get_cell(row, column).plain.strip().removesuffix("~"))


async def test_the_grid_scrolls_with_the_cursor_in_view_and_the_totals_row_pinned(make_app, deep32):
    app = make_app(*deep32)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        grid = app.screen.query_one(OverviewGrid)
        assert grid.row_count == 1 + 32 and grid.size.height < grid.row_count  # it has to scroll
        app.screen.set_focus(grid)
        await pilot.press("ctrl+end")
        await pilot.pause()
        shown = first_words(grid)
        assert grid.scroll_y > 0 and grid.cursor_row == 32
        assert shown[:2] == ["layer", "Σ"]  # the header and the totals row stay
        assert "31" in shown and "0" not in shown
        assert grid.highlighted.startswith("model.layers.31.")
        assert "layers.31." in str(app.screen.query_one("#grid-note").render())
        await pilot.press(*["up"] * 31)
        await pilot.pause()
        assert grid.cursor_row == 1 and "0" in first_words(grid)
        await pilot.press("e")
        assert any("no experts" in n for n in app.notified)


def assert_totals(app, grid: OverviewGrid, layers: int) -> None:
    """Σ per layer = its matrices' counts; Σ per module type = its layers'; the corner = the model's."""
    for layer in range(layers):
        assert count(grid, str(layer), TOTAL) == sum(count(grid, str(layer), m) for m in grid.modules)
    for module in grid.modules:
        assert count(grid, TOTAL, module) == sum(count(grid, str(layer), module) for layer in range(layers))
    assert count(grid, TOTAL, TOTAL) == app.inspector.total(0, app.k, app.epsilon)


async def test_per_layer_and_per_module_totals_follow_k_and_epsilon(make_app, deep32):
    app = make_app(*deep32)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        grid = app.screen.query_one(OverviewGrid)
        assert [grid.modules[f"{'self_attn' if m[0] in 'qkvo' else 'mlp'}.{m}"] for m in MODULES] == list("qkvogud")
        assert_totals(app, grid, 32)
        before = count(grid, TOTAL, TOTAL)
        await pilot.press(*["right_square_bracket"] * 4)
        await pilot.pause()
        assert app.epsilon == pytest.approx(0.7)
        assert_totals(app, grid, 32)
        assert count(grid, TOTAL, TOTAL) > before


async def test_an_80_layer_list_re_sorts_in_place_after_a_threshold_change(make_app, deep80):
    app = make_app(*deep80)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot, timeout=180)
        listing, grid = app.screen.query_one(MatrixList), app.screen.query_one(OverviewGrid)
        assert grid.row_count == 1 + 80
        names = listing.names()
        assert len(names) >= 560
        assert names[:7] == [f"model.layers.0.{'self_attn' if m[0] in 'qkvo' else 'mlp'}.{m}.weight" for m in MODULES]
        assert names.index("model.layers.2.self_attn.q_proj.weight") < names.index(
            "model.layers.10.self_attn.q_proj.weight")  # layers in numeric order, not the checkpoint's sorted names
        await pilot.press("o")  # most intruders first
        rows = dict(listing.table.rows)
        listing.select(names[100])
        await pilot.press(*["right_square_bracket"] * 6)
        await pilot.pause()
        order = listing.names()
        views = [app.inspector.row(0, n, app.k, app.epsilon) for n in order]
        counts = [v.count for v in views if v.status == "done"]
        assert counts == sorted(counts, reverse=True)
        assert [row.key.value for row in listing.table.ordered_rows] == order
        assert all(listing.table.rows[key] is row for key, row in rows.items())  # moved, not re-created
        assert listing.highlighted == names[100]


class ClosedAtOnce(SpectuiApp):
    """What textual-serve does when the browser's websocket closes as the app starts: the driver
    posts ExitApp before the overview has mounted its widgets."""

    CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))

    def on_mount(self) -> None:
        super().on_mount()
        self.post_message(messages.ExitApp())


async def test_an_app_closed_while_the_overview_mounts_fails_nowhere_in_spectui(tiny):
    from spectui.checkpoint.comparison import open_comparison
    from spectui.tui.inspector import Inspector

    app = ClosedAtOnce(Inspector(open_comparison(str(tiny / "base"), [str(tiny / "lora")]), None, device="cpu"))
    async with app.run_test(size=(100, 30)) as pilot:  # Textual's own Header has the same race
        await pilot.pause()
    assert app._exception is None and app.return_code == 0 and not app._exit_renderables


async def test_the_grid_follows_a_burst_of_moves_in_the_list_without_echoing_them(make_app, deep32, monkeypatch):
    """Forty moves in the list: the grid follows each and says nothing back (its echo, arriving after
    the list had moved on, pulled both back and forth for ever and starved the scan of the GIL)."""
    said = []
    heard = SpectuiApp.on_matrix_highlighted
    monkeypatch.setattr(SpectuiApp, "on_matrix_highlighted", lambda self, m: (said.append(m.name), heard(self, m)))
    app = make_app(*deep32)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        listing, grid = app.screen.query_one(MatrixList), app.screen.query_one(OverviewGrid)
        app.screen.set_focus(listing.table)
        await pilot.pause()
        said.clear()
        await pilot.press(*["down"] * 40)
        await pilot.pause(0.3)
        assert len(said) == 40 and grid.highlighted == listing.highlighted == said[-1]
        said.clear()
        await pilot.pause(0.3)
        assert not said
