"""The Train screen's Study tab, driven through Pilot on the bundled sample base and data: every field
checked as it is typed, the `spectui study` command it previews (the CLI reads it back into the same
spec), a launch that starts the study detached as `spectui study --detach` does (then cancelled), and
the run form's start-from field."""

from __future__ import annotations

import shlex

import pytest

from spectui.cli import build_command_parser
from spectui.cli.study import spec_from_args
from spectui.finetune.runs import LIVE, State, list_runs
from spectui.finetune.study import Study, list_studies, load_study_spec
from spectui.locations import samples_dir
from spectui.tui.screens.runs import RunsScreen
from spectui.tui.screens.study import StudyScreen
from spectui.tui.screens.train import TrainScreen
from spectui.tui.widgets.run_table import RunTable
from spectui.tui.widgets.spec_form import SpecForm
from spectui.tui.widgets.study_form import StudyForm

SAMPLES = samples_dir()
DATA = SAMPLES / "data"
pytestmark = pytest.mark.skipif(not (SAMPLES / "base" / "tokenizer.json").is_file(),
                                reason="the bundled sample base is not built")


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    """The study's process and its runs on one thread (far faster on 2 cores), their cache here."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def text(widget) -> str:
    return str(widget.render())


def error_of(form: StudyForm, name: str) -> str:
    return text(form.query_one(f"#study-error-{name}"))


async def wait_until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    waited = 0.0
    while not condition():
        await pilot.pause(0.2)
        waited += 0.2
        assert waited < timeout, f"timed out waiting for {what}"


async def study_tab(app, pilot) -> StudyForm:
    await pilot.press("r", "ctrl+t")
    await pilot.pause()
    assert isinstance(app.screen, TrainScreen) and app.screen.on_study_tab
    return app.screen.query_one(StudyForm)


async def edit(pilot, form: StudyForm, **values: str) -> None:
    for name, value in values.items():
        form.editor(name).value = value
    await pilot.pause()


async def test_each_field_is_checked_as_it_is_typed(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        form = await study_tab(app, pilot)
        assert app.focused is form.editor("data")
        assert form.spec.base == str(SAMPLES / "base") and form.spec.data == str(DATA / "task.jsonl")
        await wait_until(pilot, lambda: not form.errors, "the sample data checked")

        form.editor("ranks").focus()
        await pilot.press("ctrl+u", *"1,x")
        await pilot.pause()
        assert error_of(form, "ranks") == "'1,x' is not comma-separated whole numbers"
        assert app.screen.query_one("#launch-study").disabled
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, TrainScreen) and not list_studies()
        assert any("not comma-separated" in note for note in app.notified)

        await edit(pilot, form, ranks="0,2")
        assert error_of(form, "ranks") == "ranks must be a list of whole numbers of at least 1"
        await edit(pilot, form, ranks="")
        await pilot.pause()
        assert error_of(form, "ranks") == "nothing to train: give ranks, or full"
        await edit(pilot, form, ranks="1,2", alpha="x", lr_grid="1e-3,abc", steps="0")
        assert error_of(form, "alpha") == "alpha must be 2r or a number"
        assert error_of(form, "lr_grid") == "'1e-3,abc' is not comma-separated numbers"
        assert error_of(form, "steps") == "steps must be at least 1"
        await edit(pilot, form, alpha="2r", lr_grid="", steps="3")
        assert not form.errors

        await edit(pilot, form, data=str(tmp_path / "missing.jsonl"))
        assert error_of(form, "data") == f"data file {tmp_path / 'missing.jsonl'} does not exist"
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"txt": "2 + 2 = 4"}\n')
        await edit(pilot, form, data=str(bad))
        await wait_until(pilot, lambda: "missing field" in error_of(form, "data"), "the content check")
        assert error_of(form, "data") == f"{bad}: missing field `text` at line 1"  # read off the UI thread

        sequence = ",".join(str(DATA / f"seq_task{i}.jsonl") for i in (1, 2, 3))
        await edit(pilot, form, sequence=sequence)
        assert error_of(form, "data").startswith("give either data (one task) or sequence")
        await edit(pilot, form, data="")
        await wait_until(pilot, lambda: not form.errors, "the sequence's files checked")
        assert form.spec.sequence == sequence.split(",") and form.spec.is_sequence
        await edit(pilot, form, sequence=f"{sequence},{bad}")
        await wait_until(pilot, lambda: "missing field" in error_of(form, "sequence"), "the fourth file")
        assert not list_studies()


async def test_the_preview_is_the_command_that_makes_the_same_study(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        form = await study_tab(app, pilot)
        form.editor("full").value = True
        await edit(pilot, form, ranks="1,8", lr_grid="0.001,0.01", alpha="16", steps="5", name="preview")
        command = " ".join(text(app.screen.query_one("#study-command")).split())
        expected = (f"$ spectui study --base {SAMPLES / 'base'} --data {DATA / 'task.jsonl'} --ranks 1,8 --full "
                    "--alpha 16 --lr-grid 0.001,0.01 --steps 5 --name preview")
        assert command == expected
        args = build_command_parser().parse_args(shlex.split(command.removeprefix("$ "))[1:])
        assert spec_from_args(args) == form.spec.resolved()


async def test_launching_starts_the_study_detached_and_its_members_are_runs(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        form = await study_tab(app, pilot)
        await edit(pilot, form, ranks="1", steps="2", name="tui-study")
        await wait_until(pilot, lambda: not form.errors, "a valid form")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, StudyScreen), "the study view")
        study = Study(tmp_path / "runs" / "tui-study")
        assert app.screen.study.path == study.path
        try:
            assert load_study_spec(study.spec_path) == form.spec.resolved()  # as `spectui study` saves it
            assert (study.path / "command.txt").read_text().split()[-1] == str(study.path)
            await wait_until(pilot, study.running, "the study's process")
            member = tmp_path / "runs" / "tui-study-r1"
            await wait_until(pilot, lambda: (member / "spec.json").is_file(), "its member run", 240)

            await pilot.press("R")  # the member is a run like any other
            assert isinstance(app.screen, RunsScreen)
            table = app.screen.query_one(RunTable)
            await wait_until(pilot, lambda: table.row_count == 1, "the member listed")
            assert str(table.get_row_at(0)[0]) == "tui-study-r1"
        finally:
            if study.running():
                study.cancel()
            await wait_until(pilot, lambda: not study.running(), "the study to stop", 120)
        assert study.status().state is State.CANCELLED
        assert all(run.status().state not in LIVE for run in list_runs())  # the member stopped with it


async def test_the_run_form_starts_from_another_run_or_a_model(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        form = app.screen.query_one(SpecForm)
        form.editor("start_from").value = "no-such-run"
        await pilot.pause()
        assert text(form.query_one("#error-start_from")).startswith(
            "start_from no-such-run: neither a run in")
        form.editor("start_from").value = str(SAMPLES / "lora")
        await pilot.pause()
        assert "start_from" not in form.errors and form.spec.start_from == str(SAMPLES / "lora")
        assert f"--start-from {SAMPLES / 'lora'}" in " ".join(text(app.screen.query_one("#train-command")).split())
