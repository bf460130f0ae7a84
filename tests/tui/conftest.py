import pytest
from app_driver import record_notifications

from spectui.checkpoint.comparison import open_comparison
from spectui.locations import sample_comparison
from spectui.tui.app import SpectuiApp
from spectui.tui.inspector import Inspector


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One scan cache for the TUI tests: content-addressed, so a warm cache gives the same results,
    and each test waits for a scan that reads them instead of decomposing every matrix again."""
    return tmp_path_factory.mktemp("tui-cache")


@pytest.fixture
def make_app(tmp_path, monkeypatch, shared_cache):
    """The real app on the bundled samples (or given paths), with its own runs and export folders."""
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))

    def make(base=None, tuned=None, cache=None, **kwargs):
        if base is None:
            base, tuned = sample_comparison()
        inspector = Inspector(open_comparison(base, tuned), cache or shared_cache, device="cpu")
        app = SpectuiApp(inspector, export_dir=tmp_path / "export", **kwargs)
        record_notifications(app)
        return app

    return make
