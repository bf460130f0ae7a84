"""The study view (S, from Compare or the runs list): a study's state, its results table and the
paper's views, on results.json files written by hand as a study's process writes them."""

from __future__ import annotations

import io
import os
from dataclasses import replace

import pytest
from rich.console import Console
from studies import rank_study, sequence, written

from spectui.finetune.study import StudySpec, open_study
from spectui.locations import samples_dir
from spectui.study_results import (
    effective_rank_vs_rank,
    forgetting_matrix,
    forgetting_vs_rank,
    intruders_vs_rank,
    intruders_vs_stage,
    reference_vs_stage,
    results_table,
    table_cells,
)
from spectui.tui.screens.compare import CompareScreen
from spectui.tui.screens.dialogs import HelpScreen
from spectui.tui.screens.runs import RunsScreen
from spectui.tui.screens.study import StudyPickerScreen, StudyScreen
from spectui.tui.widgets.plots import SERIES
from spectui.tui.widgets.study_plots import CategoryPlot

SAMPLES = samples_dir()


def make_study(results, **fields):
    """A study directory in the runs directory: its spec (members named as in `results`) and results."""
    spec = StudySpec(base=str(SAMPLES / "base"), name=results.name, **fields).resolved()
    study = open_study(spec)
    written(study.path, results)
    return study


def rank_dir():
    return make_study(rank_study(), data=str(SAMPLES / "data" / "task.jsonl"), ranks=[1, 8], full=True,
                      lr_grid=[1e-3, 1e-2])


def sequence_dir():
    return make_study(sequence(), sequence=[str(SAMPLES / "data" / f"seq_task{i}.jsonl") for i in (1, 2, 3)],
                      ranks=[2], full=True)


def text(widget) -> str:
    console = Console(width=220, file=io.StringIO(), record=True)
    console.print(widget.content if hasattr(widget, "content") else widget.render())
    return console.export_text()


def table_rows(screen) -> list[list[str]]:
    table = screen.query_one("#study-table")
    return [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]


def plotted(screen, plot_id: str):
    """The figure a plot draws: its categories and, per series, its label and (x, y) points."""
    figure = screen.query_one(f"#{plot_id}", CategoryPlot).current
    return figure, {s.label: list(zip(s.xs, s.ys)) for s in figure.series}


def as_points(curve, categories) -> list:
    return [(categories.index(x), y) for x, y in zip(curve.x, curve.y) if y is not None]


async def wait_for(pilot, condition, what: str, timeout: float = 20.0) -> None:
    waited = 0.0
    while not condition():
        await pilot.pause(0.1)
        waited += 0.1
        assert waited < timeout, f"timed out waiting for {what}"


async def wait_until_measured(pilot, screen, count: int) -> None:
    await wait_for(pilot, lambda: sum(m.evaluated for m in screen.results.members) == count, "the results read")
    await pilot.pause()


async def open_view(app, pilot):
    await pilot.press("S")
    await wait_for(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.results is not None,
                   "the study's results")
    await pilot.pause()
    return app.screen


async def test_a_rank_study_shows_its_table_and_the_views_against_rank(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        rank_dir()
        screen = await open_view(app, pilot)
        results = rank_study()
        assert table_rows(screen) == table_cells(results_table(results))
        status = " ".join(text(screen.query_one("#study-status")).split())
        assert "rank study ranks · queued · 4/5 members measured" in status
        assert "ranks compared at matched task loss ≈ 2.2000" in status

        figure, series = plotted(screen, "study-intruders")
        assert figure.categories == ("r1", "r8", "full") and figure.x_integer and figure.y_integer
        curves = intruders_vs_rank(results)
        assert list(series) == [curve.label for curve in curves] == ["ε=0.5", "ε=0.6", "ε=0.7", "ε=0.8", "ε=0.9"]
        for curve in curves:
            assert series[curve.label] == as_points(curve, figure.categories)
        assert len({s.look.marker for s in figure.series}) == len(curves)  # apart without colour too
        _, series = plotted(screen, "study-loss")
        assert series["reference loss"] == as_points(forgetting_vs_rank(results)[0], figure.categories)
        _, series = plotted(screen, "study-rank")
        assert series["effective rank of ΔW"] == as_points(effective_rank_vs_rank(results), figure.categories)
        assert not screen.query_one("#study-forgetting").display


async def test_a_sequence_shows_each_lines_forgetting_matrix_and_the_views_against_stage(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        sequence_dir()
        screen = await open_view(app, pilot)
        results = sequence()
        status = text(screen.query_one("#study-status"))
        assert "sequence seq" in status and "matched" not in status
        tables = text(screen.query_one("#study-forgetting"))
        for line in ("r2", "full"):
            assert f"{line}: task loss after each stage" in tables
        matrix = forgetting_matrix(results, "r2")
        assert "+1.0000" in tables and "+0.4000" in tables  # task 1 forgotten by r2, less by full
        assert matrix.forgetting()[0] == pytest.approx(1.0)
        figure, series = plotted(screen, "study-intruders")
        assert figure.categories == ("base", "1", "2", "3")
        for curve in intruders_vs_stage(results):
            assert series[curve.label] == as_points(curve, figure.categories)
        _, series = plotted(screen, "study-loss")
        for curve in reference_vs_stage(results):
            assert series[curve.label] == as_points(curve, figure.categories)
        assert [s.look for s in figure.series] == list(SERIES[:2])
        assert not screen.query_one("#study-rank").display


async def test_members_appear_as_the_study_measures_them(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        study = rank_dir()
        early = rank_study()
        written(study.path, replace(early, members=[replace(early.members[0], reference_loss=None)]))
        screen = await open_view(app, pilot)
        assert str(screen.query_one("#study-intruders").render()) == (
            "intruders vs rank (k=10): no member measured yet")  # not empty axes
        written(study.path, replace(early, members=early.members[:1]))
        await wait_until_measured(pilot, screen, 1)
        assert len(table_rows(screen)) == 1
        figure, series = plotted(screen, "study-intruders")
        assert figure.categories == ("r1",) and series["ε=0.5"] == [(0, 14.0)]
        written(study.path, early)
        os.utime(study.results_path)
        await wait_for(pilot, lambda: len(table_rows(screen)) == 5, "the other members")


async def test_reached_from_compare_and_the_runs_list_with_a_choice_of_studies(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("S")
        await pilot.pause()
        assert not isinstance(app.screen, StudyScreen)
        assert any("no study in" in note for note in app.notified)

        rank_dir()
        sequence_dir()
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        await pilot.press("S")
        await pilot.pause()
        assert isinstance(app.screen, StudyPickerScreen)
        assert [study.name for study in app.screen.studies] == ["seq", "ranks"]  # newest first
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.results is not None,
                       "the chosen study")
        assert app.screen.study.name == "ranks"

        await pilot.press("escape", "escape", "R")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("S")
        await pilot.pause()
        assert isinstance(app.screen, StudyPickerScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_help_lists_the_study_keys_and_a_member_not_started_is_said(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        rank_dir()
        screen = await open_view(app, pilot)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen
        assert any("ranks-r1-lr0.001 has not started yet" in note for note in app.notified)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        own = dict(app.screen.groups[0][1])  # the screen's own keys, first
        assert app.screen.groups[0][0] == "Study"
        assert own["Enter"] == "the highlighted member's run view"
        assert own["a"].startswith("add the highlighted member's model")
        assert own["c"].startswith("stop the study") and own["u"].startswith("run a stopped study again")
        assert dict(app.screen.rows())["S"].startswith("a study's results")
