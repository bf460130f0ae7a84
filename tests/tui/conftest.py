import pytest
from app_driver import record_notifications

from spectui.checkpoint.comparison import open_comparison
from spectui.locations import sample_comparison
from spectui.tui.app import SpectuiApp
from spectui.tui.inspector import Inspector


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """The real app on the bundled samples (or given paths), with a private cache and runs folder."""
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))

    def make(base=None, tuned=None, **kwargs):
        if base is None:
            base, tuned = sample_comparison()
        inspector = Inspector(open_comparison(base, tuned), tmp_path / "cache", device="cpu")
        app = SpectuiApp(inspector, export_dir=tmp_path / "export", **kwargs)
        record_notifications(app)
        return app

    return make
