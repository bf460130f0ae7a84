"""A mixture-of-experts model in the overview: one grid cell per layer and expert module (the sum
over the layer's experts), expanded into a row per expert with Enter or `e`, an expert's matrix
opened from its own cell; a fine-tune that changed nothing said in words; each matrix's expert in
the JSON."""

import json
import shutil

import pytest
from app_driver import wait_for_scan
from safetensors.torch import save_file
from test_experts import EXPERTS, fused_state, gpt_oss, planted

from spectui.tui.screens.matrix import MatrixScreen
from spectui.tui.widgets.matrix_list import MatrixList
from spectui.tui.widgets.overview_grid import TOTAL, OverviewGrid

PLANTED = "model.layers.0.mlp.experts.1.gate_proj.weight"  # the one matrix the tuned model changes
GATE = "mlp.experts.gate_proj"


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A tiny gpt-oss (2 layers of 3 experts, stored as 3-D tensors) and a copy of it with one
    intruder planted in layer 0, expert 1's gate_proj."""
    root = tmp_path_factory.mktemp("moe")
    model = gpt_oss()
    model.save_pretrained(root / "base")
    (root / "tuned").mkdir()
    save_file(planted(fused_state(model), "model.layers.0.mlp.experts.gate_up_proj", 1, "gate_proj", "gpt_oss"),
              root / "tuned" / "model.safetensors")
    model.config.to_json_file(root / "tuned" / "config.json")
    return root


def cell_text(grid: OverviewGrid, row: str, column: str) -> str:
    """A cell's count, without the ~ that marks a random-looking base (tiny test matrices are)."""
    return grid.get_cell(row, column).plain.strip().removesuffix("~")


async def test_each_layer_has_one_cell_per_expert_module_summing_its_experts(make_app, moe):
    app = make_app(str(moe / "base"), [str(moe / "tuned")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        grid = app.screen.query_one(OverviewGrid)
        assert [grid.modules[m] for m in (GATE, "mlp.experts.up_proj", "mlp.experts.down_proj")] == ["eg", "eu", "ed"]
        assert [row.key.value for row in grid.ordered_rows] == [TOTAL, "0", "1"]  # collapsed
        planted_count = app.inspector.result(0, PLANTED).intruders(10, 0.5)
        assert planted_count >= 1
        assert cell_text(grid, "0", GATE) == str(planted_count)
        assert cell_text(grid, "1", GATE) == "0"
        assert cell_text(grid, "0", TOTAL) == str(app.inspector.total(0, 10, 0.5))
        grid.select(PLANTED)
        assert grid.highlighted is None and grid.cell.kind == "experts"
        assert len(grid.cell.names) == EXPERTS
        await pilot.pause()
        note = str(app.screen.query_one("#grid-note").render())
        assert note.startswith(f"layers.0.mlp.experts.gate_proj ×{EXPERTS}: {planted_count} intruder")


async def test_enter_adds_a_row_per_expert_whose_cells_open_its_matrices(make_app, moe):
    app = make_app(str(moe / "base"), [str(moe / "tuned")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        grid = app.screen.query_one(OverviewGrid)
        app.screen.set_focus(grid)
        grid.select(PLANTED)
        await pilot.press("enter")
        rows = [row.key.value for row in grid.ordered_rows]
        assert rows == [TOTAL, "0", *(f"0/{e}" for e in range(EXPERTS)), "1"]
        assert grid.cell.kind == "experts"  # the cursor stays on the cell it expanded
        count = app.inspector.result(0, PLANTED).intruders(10, 0.5)
        assert cell_text(grid, "0/1", GATE) == cell_text(grid, "0/1", TOTAL) == str(count)
        assert cell_text(grid, "0/0", GATE) == "0"
        await pilot.press("down", "down")
        assert grid.highlighted == PLANTED
        assert app.screen.query_one(MatrixList).highlighted == PLANTED  # the list follows
        await pilot.press("enter")
        assert isinstance(app.screen, MatrixScreen) and app.screen.matrix == PLANTED
        await pilot.press("escape")
        await pilot.pause()
        assert "0/1" in grid.rows  # still expanded on return
        await pilot.press("e")
        assert [row.key.value for row in grid.ordered_rows] == [TOTAL, "0", "1"]
        assert grid.cell.kind == "experts" and PLANTED in grid.cell.names  # folded onto the layer's cell


async def test_e_from_the_list_expands_the_layer_of_the_highlighted_expert(make_app, moe):
    app = make_app(str(moe / "base"), [str(moe / "tuned")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        listing, grid = app.screen.query_one(MatrixList), app.screen.query_one(OverviewGrid)
        listing.select(PLANTED)
        await pilot.press("e")
        assert app.screen.focused is listing.table
        assert "0/1" in grid.rows and grid.highlighted == PLANTED
        listing.select("model.layers.1.self_attn.q_proj.weight")  # any matrix of a layer: its experts
        await pilot.press("e")
        assert "1/2" in grid.rows and grid.highlighted == "model.layers.1.self_attn.q_proj.weight"


async def test_the_help_lists_the_experts_key(make_app, moe):
    from spectui.tui.screens.dialogs import help_groups

    app = make_app(str(moe / "base"), [str(moe / "tuned")])
    async with app.run_test(size=(100, 30)):
        keys = dict(row for _, rows in help_groups(app.screen) for row in rows)
        assert "a row per expert" in keys["e"]


async def test_unchanged_matrices_are_counted_in_the_header(make_app, moe):
    app = make_app(str(moe / "base"), [str(moe / "tuned")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        matrices = len(app.inspector.comparison.tuned[0].pairing.matrices)
        totals = str(app.screen.query_one("#totals").render())
        assert f"{matrices - 1} unchanged" in totals and "identical" not in totals


async def test_a_fine_tune_identical_to_its_base_is_said_in_words(make_app, tiny, tmp_path):
    shutil.copytree(tiny / "base", tmp_path / "copy")
    app = make_app(str(tiny / "base"), [str(tmp_path / "copy")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        totals = str(app.screen.query_one("#totals").render())
        matrices = len(app.inspector.comparison.tuned[0].pairing.matrices)
        assert f"identical to the base: the fine-tune changed nothing (all {matrices} matrices" in totals


def test_the_json_gives_each_matrix_its_expert(cli, moe, tmp_path):
    ran = cli("scan", moe / "base", moe / "tuned", "--json", "--cache-dir", tmp_path)
    assert ran.code == 0, ran.err
    matrices = {m["name"]: m for m in json.loads(ran.out)["matrices"]}
    assert (matrices[PLANTED]["module"], matrices[PLANTED]["expert"]) == (GATE, 1)
    assert matrices["model.layers.0.self_attn.q_proj.weight"]["expert"] is None
    experts = {m["expert"] for m in matrices.values() if m["module"] == GATE}
    assert experts == set(range(EXPERTS))
