"""Runs as separate processes: detach, outlive the launcher, kill -9 and resume, cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spectui.finetune.runs import LIVE, Run, RunStatus, State, create_run
from spectui.finetune.spec import RunSpec

pytestmark = pytest.mark.slow
SPECTUI = [sys.executable, "-m", "spectui"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Runs inherit the environment: one thread is far faster for a tiny model on 2 cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def spec(base: Path, data: Path, **changes) -> RunSpec:
    settings = {"base": str(base), "data": str(data), "device": "cpu", "rank": 2, "lr": 1e-2,
                "batch_size": 4, "log_every": 10, "eval_every": 50}
    return RunSpec(**{**settings, **changes})


def test_detached_run_outlives_its_launcher(tiny_base, text_data, tmp_path):
    launcher = subprocess.run(
        [*SPECTUI, "train", "--base", tiny_base, "--data", text_data,
         "--device", "cpu", "--max-steps", "40", "--save-every", "20", "--detach",
         "--runs-dir", tmp_path],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert launcher.returncode == 0, launcher.stderr
    run = Run(launcher.stdout.strip())
    assert run.status().state in LIVE  # the launcher returned without waiting for training
    pid = int((run.path / "pid").read_text().split()[0])
    assert os.getsid(pid) == pid  # its own session: a closed terminal or SSH does not reach it
    wait_for(lambda: run.status().state not in LIVE, "the run to end")
    assert run.status().state is State.DONE, run.log_tail(20)
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    assert run.metrics()[-1]["step"] == 40


def test_killed_run_reads_interrupted_and_resumes_to_the_end(cli, tiny_base, text_data, tmp_path):
    run = create_run(spec(tiny_base, text_data, max_steps=150, save_every=5), tmp_path)
    process = run.start()
    wait_for(run.checkpoints, "the first checkpoint")
    assert run.status().state is State.RUNNING
    process.kill()  # SIGKILL: the runner gets no chance to record anything
    wait_for(lambda: run.status().state is State.INTERRUPTED, "the kill to be noticed", 10)
    process.wait()
    assert run.status().state is State.INTERRUPTED
    assert not run.output_dir.exists()
    last_checkpoint = run.checkpoints()[-1][0]
    assert last_checkpoint < 150

    assert cli("runs", "resume", run.name, "--runs-dir", tmp_path).code == 0  # follows to the end
    assert run.status().state is State.DONE
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    steps = [row["step"] for row in run.metrics()]
    assert steps == sorted(set(steps)) and steps[-1] == 150
    log = run.log_path.read_text()
    assert f"resuming from {run.checkpoint_dir(last_checkpoint)}" in log
    assert len((run.path / "command.txt").read_text().splitlines()) == 2


def test_cancel_stops_the_run_without_output(cli, tiny_base, text_data, tmp_path):
    run = create_run(spec(tiny_base, text_data, max_steps=5000, save_every=0), tmp_path)
    process = run.start()
    wait_for(run.metrics, "the first metrics line")
    assert cli("runs", "cancel", run.name, "--runs-dir", tmp_path).code == 0
    assert process.wait(timeout=30) == 1
    assert run.status() == RunStatus(State.CANCELLED, "stopped by SIGTERM")
    assert not run.output_dir.exists()
    assert cli("runs", "cancel", run.name, "--runs-dir", tmp_path).code == 2


def test_a_run_that_cannot_start_is_failed_not_queued(tiny_base, text_data, tmp_path, monkeypatch):
    import spectui.finetune.runs as runs

    monkeypatch.setattr(runs, "launch_command", lambda *_: [str(tmp_path / "no-such-python"), "-m", "x"])
    run = create_run(spec(tiny_base, text_data, max_steps=2), tmp_path / "runs")
    with pytest.raises(runs.RunError, match="could not start .*no-such-python"):
        run.start()
    status = run.status()
    assert status.state is State.FAILED and "no-such-python" in status.message


ACCELERATE_ON_CPU = "distributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\nmixed_precision: 'no'\n"


def test_a_run_through_accelerate_launch_trains_to_the_end(tiny_base, text_data, tmp_path):
    config = tmp_path / "cpu.yaml"
    config.write_text(ACCELERATE_ON_CPU)
    run = create_run(spec(tiny_base, text_data, max_steps=20, accelerate_config=str(config)), tmp_path / "runs")
    assert run.start().wait(timeout=120) == 0, run.log_tail(20)
    assert run.status().state is State.DONE
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    assert "accelerate.commands.launch" in (run.path / "command.txt").read_text()


def test_an_accelerate_launch_that_fails_before_training_reads_failed(tiny_base, text_data, tmp_path):
    """Before, the run stayed queued with no process, read "interrupted", and offered a resume."""
    config = tmp_path / "bad.yaml"
    config.write_text("distributed_type: NOPE\n")
    run = create_run(spec(tiny_base, text_data, max_steps=20, accelerate_config=str(config)), tmp_path / "runs")
    assert run.start().wait(timeout=60) == 1
    assert run.status() == RunStatus(State.FAILED, "accelerate launch exited with status 1 before training finished")
    assert "NOPE" in run.log_path.read_text()  # the launcher's own reason


def supervise(run: Run, child: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spectui.finetune.supervisor", str(run.path),
                             sys.executable, "-c", child], start_new_session=True)


def test_a_rank_the_launcher_stopped_reads_failed_not_cancelled(tiny_base, text_data, tmp_path):
    """One rank fails; the launcher sends SIGTERM to the others, so the first records "cancelled"
    and the launcher exits 1. Without a cancel of its own, the supervisor knows better."""
    run = create_run(spec(tiny_base, text_data), tmp_path)
    first_rank = (f"from spectui.finetune.runs import Run, State; "
                  f"Run({str(run.path)!r}).set_status(State.CANCELLED, 'stopped by SIGTERM'); raise SystemExit(1)")
    assert supervise(run, first_rank).wait(timeout=30) == 1
    assert run.status() == RunStatus(State.FAILED, "accelerate launch exited with status 1 before training finished")


def test_a_cancel_reaches_the_supervisor_and_reads_cancelled(tiny_base, text_data, tmp_path):
    run = create_run(spec(tiny_base, text_data), tmp_path)
    started = tmp_path / "started"
    process = supervise(run, f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)")
    wait_for(started.exists, "the launched process", 30)
    os.killpg(process.pid, signal.SIGTERM)  # what `spectui runs cancel` sends
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert run.status() == RunStatus(State.CANCELLED, "stopped by SIGTERM")
