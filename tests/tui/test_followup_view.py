"""The follow-up literature's figures in the inspector: per matrix in its detail view, and the
cosines of the tuned models' updates in the Compare view, on the bundled samples."""

import io
import threading

from app_driver import wait_for_scan
from rich.console import Console

from spectui.locations import samples_dir
from spectui.results import ScanResults
from spectui.tui.screens.compare import CompareScreen
from spectui.tui.screens.matrix import MatrixScreen
from spectui.tui.widgets import formats


def shown(app, selector: str) -> str:
    """A Static's content as plain text (a rich table too)."""
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(app.screen.query_one(selector).content)
    return console.export_text()


async def test_the_matrix_detail_shows_angles_shares_and_drift(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for_scan(pilot)
        name = app.inspector.with_intruders(0, 10, 0.5)[0]
        app.open_matrix(name)
        await pilot.pause()
        assert isinstance(app.screen, MatrixScreen)
        result = app.inspector.result(0, name)
        text = " ".join((shown(app, "#matrix-followup") + shown(app, "#matrix-followup-values")).split())
        assert f"largest principal angle {formats.angle(result.max_principal_angle(10))}" in text
        assert " ".join(formats.angle(a) for a in result.principal_angles(10)) in text
        assert f"‖ΔW‖² in the base's top 10 {formats.share(result.base_subspace_share(10))}" in text
        assert f"along the intruders {formats.share(result.intruder_share(10, 0.5))}" in text
        assert " ".join(formats.drift(d) for d in result.spectral_drift(10)) in text
        assert f"mean |drift| of σ {formats.share(result.mean_abs_drift(10))}" in text
        assert result.intruder_share(10, 0.5) > 0  # a matrix with intruders: some ΔW lies along them

        await pilot.press("right_square_bracket")  # ε 0.55: the share along the intruders follows
        await pilot.pause()
        text = " ".join(shown(app, "#matrix-followup").split())
        assert f"along the intruders {formats.share(result.intruder_share(10, 0.55))}" in text


async def test_compare_shows_how_alike_the_updates_are_computed_off_the_ui_thread(make_app, monkeypatch):
    computed_on = []
    compute = ScanResults.update_similarity
    looked = threading.Event()

    def slowly(self):
        computed_on.append(threading.current_thread())
        looked.wait(30)  # until the test has seen the view go on meanwhile (no race with a slow machine)
        return compute(self)

    monkeypatch.setattr(ScanResults, "update_similarity", slowly)
    samples = samples_dir()
    app = make_app(str(samples / "base"), [str(samples / name) for name in ("lora", "lora-r16", "full")])
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for_scan(pilot)
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        assert "reading their matrices" in shown(app, "#compare-similarity")  # the UI did not wait
        looked.set()
        for _ in range(300):
            await pilot.pause(0.1)
            if "reading" not in shown(app, "#compare-similarity"):
                break
        assert computed_on and computed_on[0] is not threading.main_thread()
        expected = compute(app.inspector.scan_results)
        text = shown(app, "#compare-similarity")
        assert "update similarity" in text
        for label, row in zip(expected.labels, expected.cosine):
            cells = next(line.split() for line in text.splitlines() if line.split()[:1] == [label]
                         and len(line.split()) == 1 + len(row))  # the row, not the header
            assert cells[1:] == [f"{value:+.3f}" for value in row]

        await pilot.press("escape", "c")  # opened again: the cosines are kept, not read again
        await pilot.pause()
        assert "update similarity" in shown(app, "#compare-similarity") and len(computed_on) == 1


async def test_one_tuned_model_has_no_similarity_to_show(make_app):
    samples = samples_dir()
    app = make_app(str(samples / "base"), [str(samples / "lora")])
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("c")
        assert not app.screen.query_one("#compare-similarity").display
