"""The Train screen, a run's live view and the runs list, driven through Pilot on the sample base.

Runs are real detached training processes (a few steps of LoRA on the bundled base) or run
directories written by hand where only their state matters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from safetensors.torch import load_file, save_file

from spectui.finetune.runs import Run, State, create_run, list_runs
from spectui.finetune.spec import RunSpec
from spectui.locations import samples_dir
from spectui.tui.screens.overview import OverviewScreen
from spectui.tui.screens.runs import RunScreen, RunsScreen
from spectui.tui.screens.train import PresetNameScreen, PresetPickerScreen, TrainScreen
from spectui.tui.widgets.run_table import RunTable
from spectui.tui.widgets.run_view import RunView
from spectui.tui.widgets.spec_form import SpecForm

BASE = samples_dir() / "base"
pytestmark = pytest.mark.skipif(not (BASE / "tokenizer.json").is_file(),
                                reason="the bundled sample base is not built")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A stand-in tuned model of the sample base (its weights slightly moved), so the app opens."""
    directory = tmp_path_factory.mktemp("tuned") / "nudged"
    shutil.copytree(BASE, directory)
    weights = load_file(directory / "model.safetensors")
    save_file({name: w + 0.01 * w.std() if w.ndim == 2 else w for name, w in weights.items()},
              directory / "model.safetensors")
    return directory


@pytest.fixture(autouse=True)
def places(tmp_path, monkeypatch):
    """Runs and presets in the test's folder; runs train on one thread (far faster on 2 cores)."""
    monkeypatch.setenv("SPECTUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def app(make_app, tuned):
    return make_app(str(BASE), [str(tuned)])


async def wait_until(pilot, condition, what: str, timeout: float = 120.0) -> None:
    waited = 0.0
    while not condition():
        await pilot.pause(0.2)
        waited += 0.2
        assert waited < timeout, f"timed out waiting for {what}"


def text(widget) -> str:
    return str(widget.render())


def fill(form: SpecForm, **values: str) -> None:
    for name, value in values.items():
        form.editor(name).value = value


def error_of(form: SpecForm, name: str) -> str:
    return text(form.query_one(f"#error-{name}"))


async def test_launch_a_lora_run_follow_it_and_open_its_output(app, tmp_path):
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        assert isinstance(app.screen, TrainScreen)
        form = app.screen.query_one(SpecForm)
        assert form.spec.base == str(BASE) and form.spec.data.endswith("task.jsonl")

        form.editor("rank").focus()
        await pilot.press("ctrl+u", *"2x")
        await pilot.pause()
        assert error_of(form, "rank") == "rank must be an integer"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, TrainScreen) and not list_runs()

        await pilot.press("backspace")
        fill(form, max_steps="4", save_every="2", batch_size="4", max_seq_len="32", device="cpu",
             name="pilot-lora")
        await pilot.pause()
        assert not form.errors and not error_of(form, "rank")
        command = text(app.screen.query_one("#train-command"))
        assert "--rank 2" in command and "--max-steps 4" in command
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), "the live view", 30)

        screen = app.screen
        view = screen.query_one(RunView)
        await wait_until(pilot, lambda: screen.state is State.DONE, "the run to finish")
        await wait_until(pilot, lambda: len(view.latest.points) == 2, "both checkpoints scanned")
        assert "step 4/4" in text(screen.query_one("#run-progress-label"))
        assert [row["step"] for row in view.latest.rows][-1] == 4
        assert "output:" in "\n".join(screen.query_one("#run-log").lines)

        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
        run = Run(tmp_path / "runs" / "pilot-lora")
        assert app.model == 1 and app.inspector.comparison.tuned[1].path == run.output_dir
        await wait_until(pilot, lambda: app.inspector.finished, "the output's scan")
        scanned = [name for (model, name) in app.inspector.results if model == 1]
        assert len(scanned) == len(app.inspector.comparison.tuned[1].pairing.matrices) > 0


@pytest.mark.parametrize(("content", "task", "message"), [
    ('{"txt": "2 + 2 = 4"}\n', "causal-lm", "missing field `text` at line 1"),
    ('{"text": "a", "label": "yes"}\n', "classification", "label 'yes' is not a non-negative integer at line 1"),
])
async def test_bad_data_is_explained_on_the_form_and_no_run_is_created(app, tmp_path, content, task,
                                                                       message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        form = app.screen.query_one(SpecForm)
        fill(form, data=str(bad), device="cpu")
        form.editor("task").value = task
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: error_of(form, "data"), "the data error", 10)
        assert error_of(form, "data") == f"{bad}: {message}"
        assert isinstance(app.screen, TrainScreen) and not list_runs()


async def test_method_sets_defaults_and_warnings_and_presets_round_trip(app, tmp_path):
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        form = app.screen.query_one(SpecForm)
        assert "2e-05" not in form.editor("lr").placeholder
        form.editor("method").value = "full"
        await pilot.pause()
        assert "2e-05, the full default" in form.editor("lr").placeholder
        assert form.editor("rank").disabled and form.spec.lr is None
        form.editor("method").value = "pissa"
        await pilot.pause()
        assert "PiSSA rewrites the base weights" in text(app.screen.query_one("#train-notes"))

        fill(form, rank="16", lr="0.001")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, PresetNameScreen)
        await pilot.press(*"pissa16", "enter")
        assert (tmp_path / "config" / "spectui" / "presets" / "pissa16.json").is_file()
        fill(form, rank="4", lr="")
        form.editor("method").value = "lora"
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, PresetPickerScreen)
        await pilot.press("enter")
        await pilot.pause()
        assert (form.spec.method, form.spec.rank, form.spec.lr) == ("pissa", 16, 0.001)


def finished_run(root, name: str, base=BASE) -> Run:
    run = create_run(RunSpec(base=str(base), data="task.jsonl", max_steps=4, name=name), root)
    row = {"step": 4, "max_steps": 4, "loss": 1.25, "eval_loss": 1.5, "elapsed_s": 3.0}
    run.metrics_path.write_text(json.dumps(row) + "\n")
    run.set_status(State.DONE)
    run.output_dir.mkdir()
    return run


async def test_runs_list_reattaches_a_live_run_and_shows_it_interrupted_once_killed(app, tmp_path):
    finished_run(tmp_path / "runs", "finished")
    live = create_run(RunSpec(base=str(BASE), data=str(samples_dir() / "data" / "task.jsonl"),
                              device="cpu", max_steps=10_000, name="live"), tmp_path / "runs")
    process = live.start()
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: any("re-attached to live" in n
                                                for n in app.notified), "re-attach", 10)
            await pilot.press("R")
            assert isinstance(app.screen, RunsScreen)
            table = app.screen.query_one(RunTable)

            def states() -> dict[str, str]:
                return {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1])
                        for i in range(table.row_count)}

            await wait_until(pilot, lambda: len(states()) == 2, "both runs listed", 10)
            assert states()["finished"] == "done" and states()["live"] in ("queued", "running")
            assert "1.2500" in [str(cell) for cell in table.get_row_at(list(states()).index("finished"))]

            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            await wait_until(pilot, lambda: states()["live"] == "interrupted", "the kill to show", 10)
            await pilot.press(*["down"] * list(states()).index("live"), "enter")
            assert isinstance(app.screen, RunScreen) and app.screen.run.name == "live"
            await wait_until(pilot, lambda: app.screen.state is State.INTERRUPTED, "the view", 10)
            assert app.screen.check_action("resume_run", ()) and not app.screen.check_action("cancel_run", ())
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def test_a_run_of_another_base_is_not_opened_against_this_one(app, tmp_path, tuned):
    run = finished_run(tmp_path / "runs", "elsewhere", base=tuned)
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(RunScreen(run))
        await wait_until(pilot, lambda: app.screen.state is State.DONE, "the view", 10)
        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, RunScreen) and len(app.inspector.labels) == 1
        assert any("not the inspected base" in n for n in app.notified)


async def test_runs_list_adds_a_finished_result_with_one_key_and_refuses_an_unfinished_one(app, tmp_path):
    done = finished_run(tmp_path / "runs", "a-done")
    shutil.copytree(samples_dir() / "lora", done.output_dir, dirs_exist_ok=True)
    cancelled = finished_run(tmp_path / "runs", "b-cancelled")
    cancelled.set_status(State.CANCELLED)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("R")
        table = app.screen.query_one(RunTable)
        await wait_until(pilot, lambda: table.row_count == 2, "both runs listed", 10)
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]

        async def press_on(name: str, key: str) -> None:
            table.move_cursor(row=names.index(name))
            await pilot.press(key)

        await press_on("b-cancelled", "a")
        assert any("b-cancelled has no output: it is cancelled" in n for n in app.notified)
        await press_on("a-done", "a")
        assert isinstance(app.screen, RunsScreen)
        assert app.inspector.comparison.tuned[-1].path.resolve() == done.output_dir.resolve()
        await press_on("a-done", "o")  # already there: shown, not added twice
        assert isinstance(app.screen, OverviewScreen) and len(app.inspector.labels) == 2
        assert app.model == 1
