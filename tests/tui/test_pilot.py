"""The inspector driven like a person would, through Textual's Pilot, on the bundled samples."""

import json

from app_driver import wait_for_scan

from spectui.tui.screens.dialogs import HelpScreen, ThresholdsScreen
from spectui.tui.screens.matrix import MatrixScreen
from spectui.tui.screens.overview import OverviewScreen
from spectui.tui.widgets.heatmap import Heatmap
from spectui.tui.widgets.matrix_list import MatrixList
from spectui.tui.widgets.vector_table import VectorTable


def totals_text(app) -> str:
    return str(app.screen.query_one("#totals").render())


async def test_opens_scans_and_lists_every_matrix(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, OverviewScreen)
        await wait_for_scan(pilot)
        listing = app.screen.query_one(MatrixList)
        scanned = app.inspector.comparison.tuned[0].pairing.matrices
        assert len(listing.names()) >= len(scanned)
        assert "scan complete" in str(app.screen.query_one("#scan-label").render())
        assert f"{app.inspector.total(0, 10, 0.5)} intruders" in totals_text(app)


async def test_open_a_matrix_shows_spectrum_table_and_heatmap(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("down", "enter")
        assert isinstance(app.screen, MatrixScreen)
        name = app.screen.matrix
        assert name == app.inspector.entries(0)[1].name
        await pilot.pause()
        result = app.inspector.result(0, name)
        table = app.screen.query_one(VectorTable)
        assert table.row_count >= 10
        assert app.screen.query_one(Heatmap).similarity is not None
        info = str(app.screen.query_one("#matrix-info").render())
        assert f"{result.intruders(10, 0.5)} intruder" in info
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_epsilon_and_k_keys_change_counts_without_rescanning(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        scan = app.inspector.scan
        before = app.inspector.total(0, 10, 0.5)
        await pilot.press(*["right_square_bracket"] * 4)
        await pilot.pause()
        assert app.epsilon == 0.7
        after = app.inspector.total(0, 10, 0.7)
        assert after > before
        assert f"{after} intruders" in totals_text(app) and "ε=0.70" in totals_text(app)
        await pilot.press("minus")
        await pilot.pause()
        assert app.k == 9 and "k=9" in totals_text(app)
        assert app.inspector.scan is scan and scan.done == scan.total


async def test_thresholds_dialog_validates_and_applies(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("t")
        assert isinstance(app.screen, ThresholdsScreen)
        app.screen.query_one("#eps-input").value = "1.5"
        await pilot.press("enter")
        assert isinstance(app.screen, ThresholdsScreen)
        assert "ε must be" in str(app.screen.query_one("#thresholds-error").render())
        app.screen.query_one("#k-input").value = "5"
        app.screen.query_one("#eps-input").value = "0.3"
        await pilot.press("enter")
        await pilot.pause()
        assert (app.k, app.epsilon) == (5, 0.3)
        assert "k=5" in totals_text(app)


async def test_filter_narrows_the_list(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("slash", *"q_proj", "enter")
        names = app.screen.query_one(MatrixList).names()
        assert names and all("q_proj" in n for n in names)
        await pilot.press("enter")
        assert isinstance(app.screen, MatrixScreen) and "q_proj" in app.screen.matrix


async def test_next_and_previous_matrix_with_intruders(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        flagged = app.inspector.with_intruders(0, 10, 0.5)
        assert flagged
        await pilot.press("n")
        assert app.screen.query_one(MatrixList).highlighted in flagged
        await pilot.press("enter", "n")
        assert app.screen.matrix in flagged


async def test_export_writes_json_csv_svg_and_reports(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("x")
        await app.workers.wait_for_complete()
        await pilot.pause()
    files = sorted((tmp_path / "export").iterdir())
    assert [f.suffix for f in files] == [".csv", ".html", ".json", ".md", ".svg"]
    data = json.loads(files[2].read_text())
    assert data["models"][0]["total_intruders"] == app.inspector.total(0, 10, 0.5)
    assert files[4].read_text().startswith("<svg")
    assert "<html" in files[1].read_text() and "| lora" in files[3].read_text()


async def test_export_refuses_to_write_inside_a_model_it_reads(make_app, tiny, tmp_path):
    import shutil

    base = shutil.copytree(tiny / "base", tmp_path / "base")
    before = sorted(p.name for p in base.iterdir())
    app = make_app(base, [tiny / "full"])
    app.export_dir = base  # spectui started from inside the base's folder, no --export-dir
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("x")
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert sorted(p.name for p in base.iterdir()) == before
    assert any("would replace the source" in n and "--export-dir" in n for n in app.notified)


def help_rows(app) -> dict[str, str]:
    return dict(app.screen.rows())


async def test_help_is_a_scrollable_table_of_the_screens_keys_and_the_global_ones(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        rows = help_rows(app)
        assert [title for title, _ in app.screen.groups] == ["Overview", "Moving around", "Everywhere"]
        for key, words in (("x", "JSON, CSV"), ("s", "scale intruders"), ("[", "lower ε"), ("]", "raise ε"),
                           ("/", "filter"), ("n", "next matrix"), ("p", "previous matrix"), ("o", "sort"),
                           ("R", "runs"), ("ctrl+p", "palette")):
            assert words in rows[key], (key, rows)
        scroll = app.screen.query_one("#help-scroll")
        assert app.focused is scroll and scroll.max_scroll_y > 0  # 80×24 cannot show it all: it scrolls
        await pilot.press("pagedown", "end")
        await pilot.pause()
        assert scroll.scroll_y == scroll.max_scroll_y
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_help_lists_the_keys_of_the_screen_it_is_opened_on(make_app):
    from spectui.tui.screens.mitigate import MitigateScreen

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("enter", "question_mark")
        assert "overlay" in help_rows(app)["v"] and "Matrix" in app.screen.groups[0][0]
        await pilot.press("escape", "s")
        assert isinstance(app.screen, MitigateScreen)
        await pilot.press("question_mark")
        rows = help_rows(app)
        for key in ("l", "g", "w", "e", "o", "Esc"):
            assert key in rows, (key, rows)


async def test_the_footer_shows_the_main_actions_first_and_all_of_them_at_100_columns(make_app):
    from textual.widgets._footer import FooterKey

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        keys = [key for key in app.screen.query(FooterKey) if "-command-palette" not in key.classes]
        shown = [key.key for key in keys]
        assert shown[:1] == ["n"] and {"s", "c", "x", "r", "R", "question_mark"} <= set(shown)
        assert all(key.region.right <= 100 - len(" ^p palette") for key in keys), [(k.key, k.region) for k in keys]


async def test_escape_and_a_key_read_together_are_both_obeyed(make_app):
    """A terminal's ESC byte also starts Alt+key: Esc then r, read in one go (a fast typist, tmux
    send-keys), is Escape and r, and Esc then Enter is not Enter alone."""
    from textual._xterm_parser import XTermParser

    make_app()  # the app installs the reading
    for data, keys in (("\x1br", ["escape", "r"]), ("\x1b\r", ["escape", "enter"]), ("\x1b[A", ["up"])):
        parser = XTermParser()
        assert [event.key for event in [*parser.feed(data), *parser.feed("")]] == keys


async def test_returning_from_a_screen_gives_the_keys_back_to_the_same_row_and_marks_the_pane(make_app):
    from spectui.tui.screens.runs import RunsScreen
    from spectui.tui.screens.train import TrainScreen

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        table = app.screen.query_one("#matrices")
        await pilot.press("down", "down", "down", "R")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("escape")
        assert app.focused is table and table.cursor_row == 3
        assert table.styles.border_left[0] == "outer"  # the focused pane is marked by a glyph
        assert app.screen.query_one("#grid").styles.border_left[0] in ("blank", "")
        await pilot.press("r")
        assert isinstance(app.screen, TrainScreen)
        await pilot.press("escape", "enter")
        assert isinstance(app.screen, MatrixScreen) and app.screen.matrix == app.inspector.entries(0)[3].name


async def test_keys_typed_right_after_slash_go_to_the_filter(make_app):
    from textual import events

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        for key, character in (("slash", "/"), ("q", "q"), ("underscore", "_"), ("p", "p")):
            app.post_message(events.Key(key, character))  # read in one go: a paste, a fast typist
        await pilot.pause(0.3)
        assert app.return_code is None and isinstance(app.screen, OverviewScreen)
        assert app.screen.query_one("#filter").value == "q_p"
        await pilot.press("slash")  # in the box, / is text
        assert app.screen.query_one("#filter").value == "q_p/"
        await pilot.press("backspace")
        names = app.screen.query_one(MatrixList).names()
        assert names and all("q_proj" in n for n in names)
        await pilot.press("escape")
        assert app.focused is app.screen.query_one("#matrices")


async def test_quitting_while_a_run_trains_says_that_it_goes_on(make_app, tmp_path):
    from spectui.finetune.runs import Run, RunSpec, State, _process_start, create_run
    from spectui.locations import samples_dir

    run = create_run(RunSpec(base=str(samples_dir() / "base"), data=str(samples_dir() / "data" / "task.jsonl"),
                             name="watched"), tmp_path / "runs")
    run.set_status(State.RUNNING)
    import os

    (run.path / "pid").write_text(f"{os.getpid()} {_process_start(os.getpid())}\n")  # alive: this process
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        app.follow_runs([Run(run.path)])
        await app.run_action("quit")  # as q does (pilot.press would wait on the closed app)
        await pilot.pause(0.5)
    assert app.return_code == 0
    assert "watched is still training in the background" in app.quit_note


async def test_model_switch_and_tiny_terminal_do_not_crash(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("m")
        assert app.model == 1 and app.inspector.labels[1] in totals_text(app)
        await pilot.resize_terminal(20, 6)
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.resize_terminal(160, 50)
        await pilot.pause(0.3)


async def test_worker_error_is_a_notification_and_marks_the_matrix(make_app, tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    state = load_file(tiny / "full" / "model.safetensors")
    bad_name = "model.layers.0.self_attn.q_proj.weight"
    state[bad_name][0, 0] = float("nan")
    shutil.copytree(tiny / "full", tmp_path / "nan")
    save_file(state, tmp_path / "nan" / "model.safetensors")
    app = make_app(str(tiny / "base"), [str(tmp_path / "nan")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        assert app.inspector.status(0, bad_name) == "error"
        assert any("contains NaN" in n for n in app.notified)
        assert app.inspector.status(0, "model.layers.1.self_attn.q_proj.weight") == "done"


async def test_adding_a_tuned_model_scans_only_it_and_shows_it(make_app):
    from spectui.locations import sample_comparison

    base, tuned = sample_comparison()
    app = make_app(base, tuned[:1])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        first_scan = app.inspector.scan
        app.add_tuned_model(tuned[1])
        await pilot.pause()
        assert app.model == 1 and app.inspector.labels == ["lora", "full"]
        await wait_for_scan(pilot)
        assert app.inspector.scan is not first_scan and app.inspector.scan.models == [1]
        assert len([key for key in app.inspector.results if key[0] == 1]) == \
            len(app.inspector.comparison.tuned[1].pairing.matrices)
        assert "full" in totals_text(app)


async def test_compare_view_shows_every_model_and_switches(make_app):
    from spectui.tui.screens.compare import CompareScreen

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        table = app.screen.query_one("#compare-table")
        assert table.row_count == 2
        for row, label in enumerate(app.inspector.labels):
            cells = [str(c) for c in table.get_row_at(row)]
            assert cells[0] == label and cells[2] == str(app.inspector.total(row, 10, 0.5))
        k_plot = str(app.screen.query_one("#compare-k").render())
        assert "intruders vs k" in k_plot and "full" in k_plot
        await pilot.press("down", "enter")
        assert app.model == 1 and isinstance(app.screen, OverviewScreen)


async def test_matrix_view_overlays_other_models(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("enter")
        plot = app.screen.query_one("#spectrum")
        assert "full σ" not in str(plot.render())
        await pilot.press("v")
        await pilot.pause()
        assert "full σ" in str(plot.render())


async def test_mitigate_view_previews_sweeps_exports_and_opens(make_app, tmp_path):
    from spectui.tui.screens.mitigate import MitigateScreen

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("n", "s")
        assert isinstance(app.screen, MitigateScreen)
        summary = str(app.screen.query_one("#mitigate-summary").render())
        assert "intruders in" in summary and "scope top" in summary
        assert "mitigated σ" in str(app.screen.query_one("#mitigate-preview").render())
        await pilot.press("g", *["backspace"] * 20, *"1, 0 0.5", "enter")  # the user's own grid
        assert app.screen.sweep_lambdas == [0.0, 0.5, 1.0]
        await pilot.press("w")
        table = app.screen.query_one("#sweep-table")
        for _ in range(600):
            if table.row_count == 2 + 3:
                break
            await pilot.pause(0.1)
        assert table.row_count == 2 + 3
        lambda_one = [str(c) for c in table.get_row_at(table.row_count - 1)]
        tuned = [str(c) for c in table.get_row_at(1)]
        assert lambda_one[1] == "1" and lambda_one[2] == tuned[2]  # λ = 1 is the tuned model
        plot = app.screen.query_one("#sweep-plot")
        assert plot.current.mark == ("chosen λ=0.75", 0.75)  # the λ an export would use, on the sweep
        await pilot.press("l", "0", ".", "5", "enter")  # the keyboard route to λ, then keys go back to the screen
        assert app.screen.lam == 0.5 and "λ=0.5" in str(app.screen.query_one("#mitigate-summary").render())
        assert plot.current.mark == ("chosen λ=0.5", 0.5)
        await pilot.press("e")
        for _ in range(300):
            if app.screen.exported is not None:
                break
            await pilot.pause(0.1)
        exported = app.screen.exported
        assert exported is not None and exported.is_dir()
        assert "lambda0.5" in exported.name
        await pilot.press("o")
        await pilot.pause()
        assert app.inspector.comparison.tuned[-1].path.resolve() == exported.resolve()
        assert app.model == len(app.inspector.labels) - 1
        await wait_for_scan(pilot)
        before = app.inspector.total(0, 10, 0.5)
        assert app.inspector.total(app.model, 10, 0.5) < before


async def test_keys_typed_after_quit_do_not_open_screens_on_a_closing_app(make_app):
    from textual import events

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_scan(pilot)
        for key in ("q", "s", "c", "r", "R", "t", "question_mark"):  # read in one go, as from a paste
            app.post_message(events.Key(key, None))
        await pilot.pause(0.5)
    assert app.return_code == 0


async def test_an_unexpected_error_ends_the_app_with_one_line_and_a_log(make_app, tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    app = make_app()

    def broken() -> None:
        raise RuntimeError("nobody planned for this")

    monkeypatch.setattr(app, "action_compare", broken)
    with pytest.raises(RuntimeError):
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("c")
            await pilot.pause()
    log = tmp_path / "state" / "spectui" / "errors.log"
    assert app.return_code == 1
    assert "RuntimeError: nobody planned for this" in log.read_text() and "Traceback" in log.read_text()


def contrast(a, b) -> float:
    """WCAG contrast ratio of two colours."""
    def luminance(c) -> float:
        def channel(v: int) -> float:
            v /= 255
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
        return 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b)

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


async def test_the_title_bar_reads_when_the_app_is_not_focused(make_app):
    """A browser page (--serve) is often unfocused, and Textual fades the title to half then."""
    from textual.widgets import Header
    from textual.widgets._header import HeaderTitle

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        app.app_focus = False
        await pilot.pause()
        header = app.screen.query_one(Header)
        title = header.query_one(HeaderTitle)
        assert title.styles.text_opacity == 1.0
        assert contrast(header.styles.background, header.styles.color) >= 7  # WCAG AAA


async def test_the_palette_lists_every_action_with_its_key(make_app):
    from spectui.tui.commands import SpectuiCommands

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        provider = SpectuiCommands(app.screen)
        found = {str(hit.prompt if hasattr(hit, "prompt") else hit.text): hit async for hit in provider.discover()}
        for entry in ("Export (x)", "Mitigate (s)", "Compare (c)", "Train (r)", "Runs (R)", "Help (?)", "ε− ([)",
                      "Sort (o)", "Next intr. (n)"):
            assert any(entry in text for text in found), (entry, list(found))
        sort = next(hit for text, hit in found.items() if "Sort (o)" in text)
        await sort.command()
        await pilot.pause()
        assert app.screen.query_one(MatrixList).sort == 1
