"""One format per quantity and one rank convention, everywhere: the list, the matrix view, Compare,
the reports; counts that agree with the reports; the status line saying what the scan does; the
list's sort key and the line on where the intruders are."""

import re

from app_driver import wait_for_scan

from spectui.tui.inspector import where_intruders
from spectui.tui.widgets import formats
from spectui.tui.widgets.matrix_list import MatrixList


def cell(table, row: int, column: int) -> str:
    return str(table.get_row_at(row)[column])


async def test_a_quantity_reads_the_same_in_the_list_the_matrix_view_and_compare(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_scan(pilot)
        table = app.screen.query_one("#matrices")
        name = app.screen.query_one(MatrixList).highlighted
        result = app.inspector.result(0, name)
        shown = cell(table, 0, 2)
        assert shown == formats.ratio(result.delta_rel_norm) == f"{result.delta_rel_norm:#.3g}"
        await pilot.press("enter")
        await pilot.pause()
        assert f"‖ΔW‖/‖W0‖ {shown}" in str(app.screen.query_one("#matrix-info").render())
        vectors = app.screen.query_one("#vectors")
        sigmas = [cell(vectors, row, 1) for row in range(vectors.row_count)] + \
                 [cell(vectors, row, 4) for row in range(vectors.row_count)]
        assert all(re.fullmatch(r"\d\.\d\d|\d\d\.\d|\d{3,}", s) for s in sigmas), sigmas  # 3 figures each
        assert [cell(vectors, row, 0) for row in range(3)] == ["0", "1", "2"]
        await pilot.press("escape", "c")
        await pilot.pause()
        compare = app.screen.query_one("#compare-table")
        summary = app.inspector.scan_results.summary(0, 10, 0.5)
        assert cell(compare, 0, 4) == formats.ratio(summary.median_rel_norm)
        assert cell(compare, 0, 5) == formats.rank(summary.median_effective_rank)


async def test_ranks_count_from_zero_in_the_view_the_json_and_the_reports(make_app, tmp_path):
    import json

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("n", "enter")
        await pilot.pause()
        name = app.screen.matrix
        ranks = app.inspector.result(0, name).intruder_ranks(10, 0.5)
        info = str(app.screen.query_one("#matrix-info").render())
        assert f"{', '.join(map(str, ranks))} (from 0)" in info
        await pilot.press("escape", "x")
        await app.workers.wait_for_complete()
        await pilot.pause()
    export = tmp_path / "export"
    data = json.loads(next(export.glob("*.json")).read_text())
    record = next(m for m in data["models"][0]["matrices"] if m["name"] == name)
    assert record["intruder_ranks"] == ranks
    markdown = next(export.glob("*.md")).read_text()
    html = next(export.glob("*.html")).read_text()
    assert "Ranks count from 0" in markdown
    assert "rank, from 0" in html and "rank, from 1" not in html and "numbered from 0" in html


async def test_the_status_line_says_what_happens_before_the_first_result(make_app, tmp_path):
    app = make_app(cache=tmp_path / "cold")
    async with app.run_test(size=(100, 30)) as pilot:
        label = app.screen.query_one("#scan-label")
        seen = set()
        while not app.inspector.progress[0]:
            seen.add(str(label.render()))
            await pilot.pause(0.05)
        assert any(re.search(r"(starting|loading|reading|decomposing).*browsable", text) for text in seen), seen
        assert not any(re.fullmatch(r"0/\d+ matrices", text) for text in seen), seen
        assert app.screen.query_one(MatrixList).names()  # the list is there meanwhile
        await wait_for_scan(pilot)


async def test_counts_agree_with_the_reports_after_adding_a_model(make_app):
    from spectui.locations import sample_comparison

    base, tuned = sample_comparison()
    app = make_app(base, tuned[:1])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        summary = app.inspector.scan_results.summary(0, 10, 0.5)
        note = str(app.screen.query_one("#row-note").render())
        assert f"{summary.matrices} scanned · {summary.skipped} skipped" in note  # the report's "skipped"
        app.add_tuned_model(tuned[1])
        await pilot.pause()
        await wait_for_scan(pilot)
        status = str(app.screen.query_one("#scan-label").render())
        assert status.startswith(f"scan complete · 2 models × {summary.matrices} matrices"), status


async def test_o_cycles_the_list_order_by_intruders_delta_and_name(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        listing = app.screen.query_one(MatrixList)
        ins = app.inspector
        checkpoint = listing.names()
        await pilot.press("o")
        counts = [ins.row(0, n, 10, 0.5).count for n in listing.names() if ins.row(0, n, 10, 0.5).status == "done"]
        assert counts == sorted(counts, reverse=True) and listing.names() != checkpoint
        assert "intr▼" in str(listing.table.columns["count"].label)
        await pilot.press("o")
        deltas = [ins.row(0, n, 10, 0.5).delta_rel_norm for n in listing.names()]
        deltas = [d for d in deltas if d is not None]
        assert deltas == sorted(deltas, reverse=True)
        await pilot.press("o")
        shorts = [listing._entries[n].short for n in listing.names()]
        assert shorts == sorted(shorts)
        assert "by name (o)" in str(app.screen.query_one("#row-note").render())
        await pilot.press("o")
        assert listing.names() == checkpoint


def test_where_the_intruders_are_in_one_line():
    counts = [(2, "mlp.up_proj", 17), (3, "mlp.gate_proj", 16), (0, "self_attn.q_proj", 3), (1, "self_attn.k_proj", 5)]
    assert where_intruders(counts) == "41 intruders: 80% in mlp.up/gate, 80% in layers 2–3"
    counts = [(2, "mlp.up_proj", 12), (3, "mlp.gate_proj", 21), (2, "mlp.gate_proj", 1), (0, "self_attn.q_proj", 3),
              (1, "self_attn.k_proj", 4)]
    assert where_intruders(counts) == "41 intruders: 54% in mlp.gate, 51% in layer 3"  # the fewest that hold half
    even = [(layer, module, 1) for layer in range(4) for module in ("a", "b", "c", "d")]
    assert where_intruders(even) == "16 intruders: spread over every module type and layer"
    assert where_intruders([(0, "mlp.up_proj", 2)]) == "2 intruders: all in mlp.up_proj, layer 0"
    assert where_intruders([]) == "no intruders at these thresholds"


async def test_the_overview_says_where_the_intruders_are(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        totals = str(app.screen.query_one("#totals").render())
        assert app.inspector.where(0, 10, 0.5) in totals.replace("\n", " ") or \
            app.inspector.where(0, 10, 0.5).split(":")[0] in totals
