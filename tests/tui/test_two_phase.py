"""The TUI's two-phase scan: every matrix's intruder count first (minutes for an 8B pair on a CPU),
its spectra after, the matrix in view first; until then its row shows the count at the scan's
(k, ε) and its view says the spectra are on their way."""

import threading

from app_driver import wait_for_scan

import spectui.engine as engine
from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.engine import Scan
from spectui.locations import sample_comparison
from spectui.tui.inspector import Inspector
from spectui.tui.widgets.scan_status import status_text


def test_a_counted_matrix_reads_at_the_scans_thresholds_only():
    base, tuned = sample_comparison()
    comparison = open_comparison(base, tuned[:1])
    ins = Inspector(comparison, None, device="cpu")
    ins.scans.append(Scan(comparison, Cache(None), device="cpu", counts=(10, 0.5)).run())
    names = [e.name for e in ins.entries(0) if e.spec is not None]
    views = {name: ins.row(0, name, 10, 0.5) for name in names}
    assert all(v.status == "done" and not v.spectra for v in views.values())
    assert ins.total(0, 10, 0.5) == sum(v.count for v in views.values()) > 0
    assert all(ins.result(0, name) is None for name in names)  # no spectra yet: views wait for them
    assert all(ins.row(0, name, 10, 0.6).status == "pending" for name in names)  # another ε: unknown
    assert all(ins.row(0, name, 11, 0.5).status == "pending" for name in names)


def test_the_status_line_gives_each_phase():
    phases = [("counts", 5, 7), ("spectra", 1, 7)]
    assert status_text(6, 14, 30, False, 0, [7], "", 0, phases=phases) == "counts 5/7 · spectra 1/7 · ETA 30s"
    assert status_text(6, 14, None, False, 0, [7], "", 0, paused=True, phases=phases).startswith(
        "paused · counts 5/7 · spectra 1/7")


async def test_counts_show_while_spectra_wait_and_the_view_says_so(make_app, tmp_path, monkeypatch):
    """Spectra held back (a gate in the engine): every row shows its count, the header its total,
    and an opened matrix its count and that its spectra are computing; released, the scan ends as
    a plain one."""
    gate = threading.Event()
    real = engine.Scan._scan_matrix

    def held(self, name, phase, device):
        if phase == "spectra":
            gate.wait(60)
        return real(self, name, phase, device)

    monkeypatch.setattr(engine.Scan, "_scan_matrix", held)
    app = make_app(cache=tmp_path / "cache")
    async with app.run_test(size=(100, 30)) as pilot:
        ins = app.inspector
        while not ins.scans or ins.scans[0].phase_done("counts") < len(ins.scans[0].names):
            await pilot.pause(0.05)
        await pilot.pause(0.5)
        names = [e.name for e in ins.entries(0) if e.spec is not None]
        assert all(ins.row(0, n, app.k, app.epsilon).status == "done" for n in names)
        assert ins.total(0, app.k, app.epsilon) > 0 and not ins.results
        label = str(app.screen.query_one("#scan-label").render())
        assert label.startswith(f"counts {len(names)}/{len(names)} · spectra 0/")
        app.open_matrix(ins.with_intruders(0, app.k, app.epsilon)[0])
        await pilot.pause(0.3)
        info = str(app.screen.query_one("#matrix-info").render())
        assert "intruder" in info and "spectra computing" in info
        gate.set()
        await wait_for_scan(pilot)
        info = str(app.screen.query_one("#matrix-info").render())
        assert "spectra computing" not in info and "stable rank" in info
        assert len(ins.results) == len(names) * len(ins.labels)
