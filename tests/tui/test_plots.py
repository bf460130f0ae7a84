"""Plots that read at a glance: nice ticks (whole numbers where the quantity is, few figures
elsewhere, log axes fitted to the data, labels that never touch), a distinct marker per series
legible in 16 colours and with NO_COLOR, and an overview grid whose columns all fit at 80."""

import math
import re

import pytest
from app_driver import wait_for_scan
from rich.color import Color, ColorSystem
from rich.color_triplet import ColorTriplet

from spectui.tui.widgets.plots import INTRUDER, MARK, SERIES
from spectui.tui.widgets.ticks import label, linear_axis, log_axis


def significant(text: str) -> int:
    digits = re.sub(r"e.*$", "", text).replace("-", "").replace(".", "").lstrip("0")
    return len(digits.rstrip("0")) if "." not in text else len(digits)


@pytest.mark.parametrize(("low", "high"), [(0, 191), (1, 64), (0, 3), (0, 16466), (1, 225), (0, 0), (3, 3)])
@pytest.mark.parametrize("cells", [6, 12, 30, 80])
def test_integer_axes_have_whole_number_ticks(low, high, cells):
    axis = linear_axis(low, high, cells, integer=True, horizontal=cells > 12)
    assert axis.ticks and all(t == int(t) for t in axis.ticks), axis
    assert all(text.lstrip("-").isdigit() for text in axis.labels), axis


@pytest.mark.parametrize(("low", "high"), [(0.1, 0.9), (1.2, 1.5), (0, 1e-10), (0.0, 16466.0495506162), (2.3, 4.7),
                                           (0.5, 0.5000001)])
def test_other_axes_have_at_most_three_significant_figures(low, high):
    for cells in (8, 20, 60):
        axis = linear_axis(low, high, cells, horizontal=False)
        assert axis.ticks, axis
        for text in axis.labels:
            assert len(text) <= 6 and significant(text) <= 3, (text, axis)
    assert label(0.0000000000) == "0" and label(15000.0, 2500) == "15000" and label(16466.0495506162) == "1.65e4"


@pytest.mark.parametrize(("low", "high"), [(0.013, 10.49), (0.5, 2.1), (1e-12, 2.0), (1.9, 2.1), (1e-3, 1e5)])
def test_log_axes_hug_the_data(low, high):
    axis = log_axis(low, high, 14)
    assert 10**axis.high < high * 1.5 and 10**axis.low > low / 1.5  # the σ plot ran to 34.87 for σ ≈ 2
    assert len(axis.ticks) >= 2 and all(axis.low <= t <= axis.high for t in axis.ticks)
    assert all(significant(text) <= 3 for text in axis.labels), axis


@pytest.mark.parametrize("integer", [False, True])
def test_horizontal_labels_never_touch_at_any_width(integer):
    """A browser through --serve gives the plots odd widths: the labels keep a gap at every one."""
    for cells in range(10, 260, 7):
        for low, high in ((0.1, 0.9), (0, 343), (1, 64), (0.0, 2.0)):
            axis = linear_axis(low, high, cells, integer=integer)
            spots = [(t - axis.low) / (axis.high - axis.low) * cells for t in axis.ticks]
            for (a, ta), (b, tb) in zip(zip(spots, axis.labels), zip(spots[1:], axis.labels[1:])):
                assert b - a >= (len(ta) + len(tb)) / 2 + 1, (cells, axis)


def test_series_differ_by_marker_and_by_colour_in_16_colours():
    markers = [look.sample for look in SERIES[:5]] + [INTRUDER.sample, MARK.sample]
    assert len(set(markers)) == len(markers)
    standard = [Color.from_triplet(ColorTriplet(*look.color)).downgrade(ColorSystem.STANDARD).number
                for look in (*SERIES[:5], INTRUDER, MARK)]
    assert len(set(standard)) == len(standard), standard  # the ε mark is no series' colour, intruders neither


def legend_lines(plot) -> list[str]:
    return [line.plain for line in plot.legend(plot.current, plot.size.width)]


async def test_every_series_has_its_own_marker_in_the_legend_and_the_mark_is_named(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("n", "enter", "v")
        await pilot.pause()
        plot = app.screen.query_one("#spectrum")
        figure = plot.current
        assert [s.label for s in figure.series] == ["base σ", "tuned σ", "full σ", "intruder"]
        assert len({s.look.marker for s in figure.series}) == 4
        legend = " ".join(legend_lines(plot))
        assert "⠒⠒ base σ" in legend and "•• tuned σ" in legend and "× intruder" in legend
        assert figure.series[0].xs[0] == 0  # ranks from 0, like the table and the JSON
        ranks = app.inspector.result(0, app.screen.matrix).intruder_ranks(10, 0.5)
        assert figure.series[-1].xs == ranks


async def test_the_overview_plot_has_a_legend_at_80x24_with_three_models(make_app):
    from spectui.locations import samples_dir

    samples = samples_dir()
    app = make_app(str(samples / "base"), [str(samples / name) for name in ("lora", "full", "lora-r16")])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_scan(pilot)
        plot = app.screen.query_one("#eps-curve")
        text = str(plot.render())
        for name in ("lora", "full", "lora-r16", "ε=0.50"):
            assert name in text, text
        assert "enlarge" not in text


async def test_with_no_color_series_take_the_terminal_colour_and_keep_their_markers(make_app, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("n", "enter")
        await pilot.pause()
        plot = app.screen.query_one("#spectrum")
        assert app.no_color and plot._color(SERIES[1]) == "default"
        rendered = plot.render()
        assert "•" in rendered.plain and "x" in rendered.plain
        assert not any(span.style and "rgb" in str(span.style) for span in rendered.spans)


async def test_the_grid_abbreviates_modules_so_all_fit_at_80_and_names_the_cell_in_full(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_scan(pilot)
        grid = app.screen.query_one("#grid")
        assert [str(column.label).strip() for column in grid.columns.values()] == ["layer", *"qkvogud", "Σ"]
        assert grid.virtual_size.width <= grid.scrollable_content_region.width
        await pilot.press("tab")
        assert app.focused is grid
        await pilot.press("right", "right", "right", "right", "right", "right", "down", "down")
        await pilot.pause()
        note = str(app.screen.query_one("#grid-note").render())
        assert note.startswith("layers.2.mlp.down_proj:") and "intruders" in note
        assert app.screen.query_one("MatrixList").highlighted.endswith("layers.2.mlp.down_proj.weight")


def test_abbreviations_stay_unambiguous():
    from spectui.tui.widgets.overview_grid import abbreviations

    llama = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    assert list(abbreviations(llama).values()) == list("qkvogud")
    bert = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
    assert list(abbreviations(bert).values()) == ["q", "k", "v", "ao", "i", "out"]
    odd = ["block.alpha_proj", "block.beta_proj"]
    assert list(abbreviations(odd).values()) == ["alpha", "beta"]
    assert math.isclose(1.0, 1.0)
