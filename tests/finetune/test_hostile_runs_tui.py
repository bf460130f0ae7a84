"""The TUI with run directories in hostile states: start-up (re-attaching live runs) goes on,
the runs list shows every run, a damaged one with a note saying what is wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from app_driver import record_notifications

from spectui.checkpoint.comparison import open_comparison
from spectui.finetune import runs
from spectui.finetune.runs import Run, State, create_run
from spectui.finetune.spec import RunSpec
from spectui.locations import sample_comparison, samples_dir
from spectui.tui.app import SpectuiApp
from spectui.tui.inspector import Inspector
from spectui.tui.screens.runs import RunsScreen
from spectui.tui.widgets.run_table import COLUMNS, RunTable

BASE = samples_dir() / "base"
pytestmark = pytest.mark.skipif(not (BASE / "tokenizer.json").is_file(),
                                reason="the bundled sample base is not built")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # errors.log, were one written
    return tmp_path / "runs"


@pytest.fixture
def app(tmp_path, root):
    base, tuned = sample_comparison()
    inspector = Inspector(open_comparison(base, tuned[:1]), tmp_path / "cache", device="cpu")
    app = SpectuiApp(inspector, export_dir=tmp_path / "export")
    record_notifications(app)
    return app


def run_in(root: Path, name: str, **files: str) -> Run:
    run = create_run(RunSpec(base=str(BASE), data=str(samples_dir() / "data" / "task.jsonl"),
                             max_steps=20, name=name), root)
    for filename, content in files.items():
        (run.path / filename.replace("__", ".")).write_text(content)
    return run


def write_pid_of_this_process(run: Run) -> None:
    (run.path / "pid").write_text(f"{os.getpid()} {runs._process_start(os.getpid())}\n")


async def wait_until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    waited = 0.0
    while not condition():
        await pilot.pause(0.2)
        waited += 0.2
        assert waited < timeout, f"timed out waiting for {what}"


async def test_start_up_and_the_runs_list_survive_hostile_runs(app, root):
    good = run_in(root, "good", metrics__jsonl=json.dumps({"step": 5, "max_steps": 20, "loss": 1.25}) + "\n")
    good.set_status(State.DONE)
    run_in(root, "bad-status", status="bogus\n")
    run_in(root, "bad-pid", status="running\n", pid="-1 x\n")
    run_in(root, "bad-metrics", metrics__jsonl='{"step": "1", "loss": NaN}\n[\n')
    run_in(root, "bad-spec", spec__json='{"method": 5}')
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause(1.0)  # re-attaching runs the moment the app is up
        assert app.is_running
        await pilot.press("R")
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one(RunTable)
        await wait_until(pilot, lambda: table.row_count == 5, "every run listed")
        rows = {str(table.get_row_at(i)[0]): dict(zip(COLUMNS, map(str, table.get_row_at(i))))
                for i in range(table.row_count)}
        good = rows["good"]
        assert (good["method"], good["state"], good["step"], good["loss"]) == ("lora r=8", "done", "5/20", "1.2500")
        assert rows["bad-status"]["state"] == "unknown" and "status: 'bogus'" in rows["bad-status"]["note"]
        assert rows["bad-pid"]["state"] == "unknown" and "pid: not a process id" in rows["bad-pid"]["note"]
        assert "metrics.jsonl: line 1 has no step" in rows["bad-metrics"]["note"]
        assert rows["bad-spec"]["state"] == "unknown"  # queued, and so followed, were its spec fine
        assert rows["bad-spec"]["method"] == "?" and "spec.json: method must be a string" in rows["bad-spec"]["note"]
        await pilot.pause(1.5)  # a refresh or two of the list
        assert app.is_running and isinstance(app.screen, RunsScreen)
        await pilot.press(*["down"] * list(rows).index("bad-spec"), "enter")
        assert isinstance(app.screen, RunsScreen)  # not opened: its spec is told instead
        assert any("spec.json: method must be a string" in n for n in app.notified)


async def test_start_up_survives_a_live_run_whose_spec_is_damaged(app, root):
    """Such a run reads unknown, so it is not re-attached: following it would read its spec."""
    run = run_in(root, "live-bad-spec", status="running\n", spec__json="not json")
    write_pid_of_this_process(run)  # its process lives
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause(1.0)
        await pilot.press("R")
        table = app.screen.query_one(RunTable)
        await wait_until(pilot, lambda: table.row_count == 1, "the run listed")
        row = dict(zip(COLUMNS, map(str, table.get_row_at(0))))
        assert row["state"] == "unknown" and "spec.json: invalid JSON" in row["note"]
        assert app.is_running and not any("re-attached" in n for n in app.notified)


async def test_a_runs_folder_that_is_a_file_is_told_not_fatal(app, root):
    root.write_text("not a folder")
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause(0.5)
        await pilot.press("R")
        await wait_until(pilot, lambda: any("is a file, not a directory" in n for n in app.notified),
                         "the runs folder's problem told")
        await pilot.pause(1.5)
        assert app.is_running and isinstance(app.screen, RunsScreen)
        assert sum("is a file, not a directory" in n for n in app.notified) == 1  # told once
