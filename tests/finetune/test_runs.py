"""Run directories without training: naming, status, liveness, metrics, logs, launch command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spectui.finetune import runs
from spectui.finetune.runs import (
    Run,
    RunError,
    State,
    create_run,
    find_run,
    launch_command,
    list_runs,
)
from spectui.finetune.spec import RunSpec
from spectui.locations import RUNS_ENV, runs_dir


@pytest.fixture
def run(tiny_base, text_data, tmp_path) -> Run:
    return create_run(RunSpec(base=str(tiny_base), data=str(text_data), max_steps=40),
                      tmp_path / "runs")


def record_process(run: Run, pid: int, start: str) -> None:
    (run.path / "pid").write_text(f"{pid} {start}\n")


def test_new_run_holds_resolved_spec_and_is_queued(run, text_data):
    assert run.name.startswith("lora-r8-")
    assert run.status() == runs.RunStatus(State.QUEUED)
    saved = run.spec()
    assert saved.name == run.name
    assert saved.data == str(text_data.resolve())
    assert run.output_dir == run.path / "output"


def test_default_names_do_not_clash_and_explicit_ones_must_be_free(tiny_base, tmp_path):
    spec = RunSpec(base=str(tiny_base), data="d.jsonl", method="full")
    first, second = create_run(spec, tmp_path), create_run(spec, tmp_path)
    assert first.name != second.name and second.name.startswith("full-")
    create_run(RunSpec(name="mine"), tmp_path)
    with pytest.raises(RunError, match="a run named mine already exists"):
        create_run(RunSpec(name="mine"), tmp_path)


def test_runs_root_follows_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(RUNS_ENV, str(tmp_path))
    assert runs_dir() == tmp_path
    assert runs_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv(RUNS_ENV)
    assert runs_dir() == Path("runs")


def test_running_status_with_live_process_stays_running(run):
    run.set_status(State.RUNNING)
    record_process(run, os.getpid(), runs._process_start(os.getpid()))
    assert run.status().state is State.RUNNING


def test_running_status_with_reused_pid_reads_interrupted(run):
    run.set_status(State.RUNNING)
    record_process(run, os.getpid(), "1")  # our pid, but not the process that was started
    assert run.status().state is State.INTERRUPTED


def test_running_status_with_dead_process_reads_interrupted(run):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    start = runs._process_start(finished.pid)
    finished.wait()
    run.set_status(State.RUNNING)
    record_process(run, finished.pid, start)
    assert run.status().state is State.INTERRUPTED
    with pytest.raises(RunError, match="is not running"):
        run.cancel()


def test_final_states_keep_their_message(run):
    run.set_status(State.FAILED, "ran out of memory")
    assert run.status() == runs.RunStatus(State.FAILED, "ran out of memory")


def test_resume_refuses_live_and_finished_runs(run):
    run.set_status(State.RUNNING)
    with pytest.raises(RunError, match="is still running"):
        run.resume()
    run.set_status(State.DONE)
    with pytest.raises(RunError, match="is already done"):
        run.resume()


def test_metrics_skip_a_line_still_being_written(run):
    rows = [{"step": step, "loss": 1.0 / step} for step in (1, 2, 3)]
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert run.metrics() == rows
    assert run.metrics(since_line=2) == rows[2:]
    run.keep_metrics_until(2)
    assert run.metrics() == rows[:2]


def test_log_tail_and_log_since(run):
    run.log_path.write_text("".join(f"line {n}\n" for n in range(5000)))
    assert run.log_tail(3) == ["line 4997", "line 4998", "line 4999"]
    text, offset = run.log_since(run.log_path.stat().st_size - 7)
    assert text == "e 4999\n" and offset == run.log_path.stat().st_size
    assert run.log_since(offset) == ("", offset)


def test_list_runs_newest_first_with_summaries(run, tiny_base, tmp_path):
    run.metrics_path.write_text(
        json.dumps({"step": 10, "max_steps": 40, "loss": 2.0, "eval_loss": 2.5}) + "\n"
        + json.dumps({"step": 20, "max_steps": 40, "loss": 1.5, "eval_loss": None}) + "\n")
    os.utime(run.path / "spec.json", (0, 0))
    newer = create_run(RunSpec(base=str(tiny_base), data="d.jsonl"), tmp_path / "runs")
    assert [listed.name for listed in list_runs(tmp_path / "runs")] == [newer.name, run.name]
    summary = run.summary()
    assert (summary.step, summary.max_steps, summary.loss, summary.eval_loss) == (20, 40, 1.5, 2.5)
    assert newer.summary().step == 0
    assert find_run(run.name, tmp_path / "runs").path == run.path
    with pytest.raises(RunError, match="no run named nope"):
        find_run("nope", tmp_path / "runs")


def test_runs_list_command(cli, run, tmp_path):
    run.set_status(State.FAILED, "the loss became nan at step 3")
    ran = cli("runs", "list", "--runs-dir", tmp_path / "runs")
    assert ran.code == 0
    out = ran.out.splitlines()
    assert out[0].split() == ["NAME", "STATE", "STEP", "LOSS", "EVAL", "NOTE"]
    assert out[1].split()[:3] == [run.name, "failed", "0/40"]
    assert out[1].endswith("the loss became nan at step 3")
    ran = cli("runs", "--runs-dir", tmp_path / "runs")  # bare `runs` lists too
    assert ran.code == 0 and run.name in ran.out


def test_cancel_and_resume_of_unknown_run_exit_2(cli, tmp_path):
    ran = cli("runs", "cancel", "ghost", "--runs-dir", tmp_path)
    assert ran.code == 2 and ran.err == f"spectui: error: no run named ghost in {tmp_path}\n"
    assert cli("runs", "resume", "ghost", "--runs-dir", tmp_path).code == 2


@pytest.mark.parametrize(("gpus", "config", "expected"), [
    (0, None, "python"),
    (1, None, "python"),
    (2, None, "multi-gpu"),
    (0, "acc.yaml", "config"),
])
def test_launch_goes_through_accelerate_only_when_spread(gpus, config, expected):
    spec = RunSpec(accelerate_config=config)
    command = launch_command(spec, Path("/r/x"), gpus)
    accelerate = [sys.executable, "-m", "spectui.finetune.supervisor", "/r/x",
                  sys.executable, "-m", "accelerate.commands.launch"]
    runner = ["spectui.finetune.runner", "/r/x"]
    assert command == {
        "python": [sys.executable, "-m", *runner],
        "multi-gpu": [*accelerate, "--multi_gpu", "--num_processes", "2", "--module", *runner],
        "config": [*accelerate, "--config_file", "acc.yaml", "--module", *runner],
    }[expected]
