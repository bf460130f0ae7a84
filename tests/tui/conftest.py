import pytest

from spectui.checkpoint.comparison import open_comparison
from spectui.samples import sample_comparison
from spectui.tui.app import REFRESH_SECONDS, SpectuiApp
from spectui.tui.inspector import Inspector


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """The real app on the bundled samples (or given paths), with a private cache and runs folder."""
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))

    def make(base=None, tuned=None, **kwargs):
        if base is None:
            base, tuned = sample_comparison()
        inspector = Inspector(open_comparison(base, tuned), tmp_path / "cache", device="cpu")
        return SpectuiApp(inspector, export_dir=tmp_path / "export", **kwargs)

    return make


async def wait_for_scan(pilot, timeout: float = 60.0) -> None:
    waited = 0.0
    while not pilot.app.inspector.finished:
        await pilot.pause(0.1)
        waited += 0.1
        assert waited < timeout, "scan did not finish"
    await pilot.pause(2 * REFRESH_SECONDS)  # the batched refresh
