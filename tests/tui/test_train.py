"""The Train screen, a run's live view and the runs list, driven through Pilot on the sample base.

Runs are real detached training processes (a few steps of LoRA on the bundled base) or run
directories written by hand where only their state matters.
"""

from __future__ import annotations

import json
import os
import re
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
        assert "output:" in "\n".join(screen.query_one("#run-log").text)
        outcome = text(screen.query_one("#run-outcome"))
        assert outcome.startswith("done: ") and "intruders at step 4" in outcome
        assert str(run_output(tmp_path)) in outcome

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


def run_output(tmp_path):
    return Run(tmp_path / "runs" / "pilot-lora").output_dir


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
                return {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[2])
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


async def test_the_data_file_is_checked_as_it_is_typed(app, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "2 + 2 = 4"}\n')
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r", "tab", "tab", "tab")
        form = app.screen.query_one(SpecForm)
        assert app.focused is form.editor("data")
        await pilot.press("ctrl+u", *str(tmp_path / "missing.jsonl"))
        await pilot.pause()
        assert error_of(form, "data") == f"{tmp_path / 'missing.jsonl'}: file not found"
        assert app.screen.query_one("#launch").disabled
        fill(form, data=str(bad))
        await wait_until(pilot, lambda: "missing field" in error_of(form, "data"), "the content check", 10)
        assert error_of(form, "data") == f"{bad}: missing field `text` at line 1"  # before any launch
        fill(form, data=str(samples_dir() / "data" / "task.jsonl"))
        await wait_until(pilot, lambda: not error_of(form, "data"), "the good file", 10)
        assert not list_runs()


def live_run(root, name: str, **spec) -> Run:
    """A run whose process is this test's own (alive, so the run reads live), files written by hand."""
    from spectui.finetune.runs import _process_start

    run = create_run(RunSpec(base=str(BASE), data=str(samples_dir() / "data" / "task.jsonl"), name=name,
                             **spec), root)
    run.set_status(State.RUNNING)
    (run.path / "pid").write_text(f"{os.getpid()} {_process_start(os.getpid())}\n")
    return run


async def test_a_starting_run_says_so_and_its_log_wraps_without_library_warnings(app, tmp_path):
    run = live_run(tmp_path / "runs", "starting", max_steps=200)
    long = "lora on base: " + "x" * 150
    run.log_path.write_text(
        "/venv/lib/python3.11/site-packages/transformers/utils.py:42: FutureWarning: `foo` is deprecated\n"
        "  warnings.warn(\n" + long + "\nwarning: spectui's own warning stays\n")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(RunScreen(run))
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one(RunView).latest is not None, "the view", 10)
        await pilot.pause()
        progress = text(screen.query_one("#run-progress-label"))
        assert progress.startswith("starting") and "loading the model" in progress, progress
        assert "step 0/200" not in progress and "1 library warning(s) kept in log.txt" in progress
        log = screen.query_one("#run-log")
        assert log.text == [long, "warning: spectui's own warning stays"] and log.wrap
        assert log.virtual_size.width <= log.size.width  # wrapped to the pane, not cut at its edge
        run.append_metrics({"step": 1, "max_steps": 200, "loss": 2.0, "elapsed_s": 1.5})
        await wait_until(pilot, lambda: "step 1/200" in text(screen.query_one("#run-progress-label")),
                         "the first step", 10)


async def test_cancel_and_resume_say_what_is_true(app, tmp_path):
    from spectui.tui.screens.runs import ConfirmScreen

    run = live_run(tmp_path / "runs", "no-checkpoint", max_steps=225, save_every=50)
    for step in range(1, 31):
        run.append_metrics({"step": step, "max_steps": 225, "loss": 2.0, "elapsed_s": float(step)})
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(RunScreen(run))
        screen = app.screen
        await wait_until(pilot, lambda: screen.state is State.RUNNING, "the view", 10)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        question = app.screen.question
        assert "at step 30" in question and "no checkpoint yet (the first is written at step 50)" in question
        assert "start again from step 0" in question and "are kept" not in question
        await pilot.press("n")
        checkpoint = run.checkpoint_dir(20)
        checkpoint.mkdir(parents=True)
        (checkpoint / "state.pt").write_bytes(b"")
        await pilot.press("c")
        question = app.screen.question
        assert "checkpoint at step 20 is kept" in question and "the 10 steps after it are redone" in question
        await pilot.press("n")


def test_a_run_started_again_shows_only_its_new_steps():
    from spectui.tui.widgets.run_view import latest_attempt

    rows = [{"step": s} for s in (1, 2, 3, 30)] + [{"step": s} for s in (1, 2)]  # restarted from 0
    assert [r["step"] for r in latest_attempt(rows)] == [1, 2]
    rows = [{"step": s} for s in (10, 20, 30)] + [{"step": 21}]  # resumed from the checkpoint at 20
    assert [r["step"] for r in latest_attempt(rows)] == [10, 20, 21]


def test_the_resume_file_is_the_one_the_runner_writes():
    from spectui.finetune.checkpoints import STATE_FILE
    from spectui.tui.widgets.run_view import RESUME_FILE

    assert RESUME_FILE == STATE_FILE


async def test_the_runs_list_has_method_start_and_time(app, tmp_path):
    finished_run(tmp_path / "runs", "timed")
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("R")
        table = app.screen.query_one(RunTable)
        await wait_until(pilot, lambda: table.row_count == 1, "the run listed", 10)
        header = [str(column.label) for column in table.columns.values()]
        assert header[:6] == ["run", "method", "state", "started", "step", "time"]
        row = [str(cell) for cell in table.get_row_at(0)]
        assert row[1] == "lora r=8" or row[1].startswith("lora r=")
        assert re.fullmatch(r"\d\d:\d\d", row[3]) and row[5] == "3s"


async def test_a_finished_run_is_summed_up(app, tmp_path):
    run = finished_run(tmp_path / "runs", "summed")
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(RunScreen(run))
        await wait_until(pilot, lambda: app.screen.state is State.DONE, "the view", 10)
        await pilot.pause()
        outcome = text(app.screen.query_one("#run-outcome"))
        assert outcome.startswith("done: eval loss 1.5000 at step 4") and str(run.output_dir) in outcome
