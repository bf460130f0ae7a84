"""Run directories and runs folders as anyone may have left them: names that are paths, a runs
folder that is a file or read-only, damaged status, pid, metrics and spec files, a checkpoint
state that is not a safe pickle, a base that would need the network. Each gets one sentence
naming the file (exit 2 from the CLI), never a traceback, a hang or a write elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectui.errors import FileInputError, InputError
from spectui.finetune import runs
from spectui.finetune.checkpoints import STATE_FILE, load_state, restore
from spectui.finetune.runs import (
    OFFLINE_ENV,
    Run,
    RunError,
    State,
    create_run,
    find_run,
    list_runs,
)
from spectui.finetune.spec import NAME_LIMIT, RunSpec, SpecError

REPO = Path(__file__).resolve().parents[2]


def make(root: Path, name: str, base: Path, data: Path, status: str | None = None) -> Run:
    """A queued run named `name` (or in `status`, written as is)."""
    run = create_run(RunSpec(base=str(base), data=str(data), max_steps=40, name=name), root)
    if status is not None:
        write(run, "status", status)
    return run


def write(run: Run, filename: str, content: str | bytes) -> None:
    path = run.path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def one_line_error(ran) -> str:
    assert ran.code == 2, ran
    assert ran.err.startswith("spectui: error: ") and ran.err.count("\n") == 1, ran.err
    assert "Traceback" not in ran.err
    return ran.err


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


# -- 1. run names are plain names ------------------------------------------------------------

@pytest.mark.parametrize("command", ["resume", "cancel"])
@pytest.mark.parametrize("name", ["../escaped", "..", ".", "sub/../../escaped", "/tmp", "a/b"])
def test_a_run_name_that_is_a_path_is_refused_before_anything_starts(
        cli, tiny_base, text_data, tmp_path, root, command, name):
    escaped = create_run(RunSpec(base=str(tiny_base), data=str(text_data), name="escaped"), tmp_path)
    escaped.set_status(State.INTERRUPTED)  # resumable, were it found
    root.mkdir()
    err = one_line_error(cli("runs", command, name, "--runs-dir", root))
    assert "a run name must be a plain directory name" in err
    assert not (escaped.path / "pid").exists() and not (escaped.path / "command.txt").exists()
    assert escaped.status().state is State.INTERRUPTED


def test_a_link_out_of_the_runs_directory_is_not_a_run_of_it(cli, tiny_base, text_data, tmp_path, root):
    outside = create_run(RunSpec(base=str(tiny_base), data=str(text_data), name="outside"), tmp_path)
    outside.set_status(State.INTERRUPTED)
    root.mkdir()
    (root / "evil").symlink_to(outside.path)
    with pytest.raises(RunError, match="is a link out of"):
        find_run("evil", root)
    assert list_runs(root) == []
    one_line_error(cli("runs", "resume", "evil", "--runs-dir", root))
    assert not (outside.path / "pid").exists()


def test_a_name_of_300_characters_is_one_line_not_an_os_error(cli, tiny_base, text_data, root):
    long = "a" * 300
    for argv in (("runs", "resume", long), ("runs", "cancel", long),
                 ("train", "--base", tiny_base, "--data", text_data, "--name", long)):
        err = one_line_error(cli(*argv, "--runs-dir", root))
        assert f"at most {NAME_LIMIT} characters" in err and long not in err
    assert not root.exists()  # refused before any directory was made
    with pytest.raises(RunError, match=f"at most {NAME_LIMIT} characters"):
        create_run(RunSpec(name=long), root)
    assert "name" not in RunSpec(name="a" * NAME_LIMIT).errors(on_disk=False)


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "/abs", "a" * (NAME_LIMIT + 1), "x\ny"])
def test_create_run_refuses_a_spec_name_that_is_not_plain(tmp_path, root, name):
    with pytest.raises(RunError, match="a run name must"):
        create_run(RunSpec(name=name), root)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the runs directory


# -- 2. the runs directory ---------------------------------------------------------------------

def test_a_runs_directory_that_is_a_file_is_one_line(cli, tiny_base, text_data, tmp_path):
    file = tmp_path / "runs"
    file.write_text("not a directory")
    for argv in (("runs",), ("runs", "list"), ("runs", "resume", "x"), ("runs", "cancel", "x"),
                 ("train", "--base", tiny_base, "--data", text_data, "--device", "cpu")):
        err = one_line_error(cli(*argv, "--runs-dir", file))
        assert str(file) in err and "is a file, not a directory" in err
    err = one_line_error(cli("train", "--base", tiny_base, "--data", text_data,
                             "--runs-dir", file / "below"))
    assert "cannot" in err
    assert file.read_text() == "not a directory"


def test_a_read_only_runs_directory_is_one_line(cli, tiny_base, text_data, root, monkeypatch):
    root.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == root
                        else real_access(path, mode, **kw))  # what a read-only mount answers
    err = one_line_error(cli("train", "--base", tiny_base, "--data", text_data, "--runs-dir", root))
    assert f"{root}: the runs directory is read-only" in err
    assert list(root.iterdir()) == []
    ran = cli("runs", "list", "--runs-dir", root)  # reading a read-only directory is fine
    assert ran.code == 0 and ran.err == ""


def test_a_run_directory_that_cannot_be_made_is_one_line(cli, tiny_base, text_data, root, monkeypatch):
    root.mkdir()

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    err = one_line_error(cli("train", "--base", tiny_base, "--data", text_data, "--runs-dir", root))
    assert "cannot create the run's directory (Permission denied)" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_chmod_read_only_runs_directory_is_one_line(cli, tiny_base, text_data, root):
    root.mkdir()
    root.chmod(0o555)
    try:
        err = one_line_error(cli("train", "--base", tiny_base, "--data", text_data, "--runs-dir", root))
        assert "read-only" in err
    finally:
        root.chmod(0o755)


def test_an_absent_runs_directory_lists_nothing(cli, tmp_path):
    ran = cli("runs", "list", "--runs-dir", tmp_path / "absent")
    assert ran.code == 0 and ran.out.split() == ["NAME", "STATE", "STEP", "LOSS", "EVAL", "NOTE"]
    assert list_runs(tmp_path / "absent", strict=True) == []
    assert not (tmp_path / "absent").exists()


# -- 3. hostile run state ------------------------------------------------------------------------

RUNNING = "running\n"
HOSTILE = [  # (files written, state listed, words of the note)
    ({"status": "bogus\n"}, "unknown", "status: 'bogus' is not a run state"),
    ({"status": ""}, "unknown", "status: '' is not a run state"),
    ({"status": b"\xff\xfe\x00\x1b[2J"}, "unknown", "is not a run state"),
    ({"status": "unknown\n"}, "unknown", "not a state a run records"),
    ({"status": "done\n" + "x" * 70_000}, "unknown", "status: is larger than 64 KiB"),
    ({"status": RUNNING, "pid": "abc"}, "unknown", "pid: not a process id and start time"),
    ({"status": RUNNING, "pid": ""}, "unknown", "pid: not a process id"),
    ({"status": RUNNING, "pid": "-5 1"}, "unknown", "pid: not a process id"),
    ({"status": RUNNING, "pid": "0 1"}, "unknown", "pid: not a process id"),
    ({"status": RUNNING, "pid": "99999999999999999999 1"}, "unknown", "pid: not a process id"),
    ({"status": RUNNING, "pid": "4294967296 1"}, "unknown", "pid: not a process id"),
    ({"status": RUNNING, "pid": b"\x00" * 10_000}, "unknown", "pid: is larger than"),
    ({"metrics.jsonl": "not json\n"}, "queued", "metrics.jsonl: line 1 is not JSON"),
    ({"metrics.jsonl": "[1, 2]\n"}, "queued", "line 1 is not a JSON object"),
    ({"metrics.jsonl": '"text"\n'}, "queued", "line 1 is not a JSON object"),
    ({"metrics.jsonl": '{"step": "3", "loss": 1.0}\n'}, "queued", "line 1 has no step"),
    ({"metrics.jsonl": '{"step": true, "loss": 1.0}\n'}, "queued", "line 1 has no step"),
    ({"metrics.jsonl": '{"step": -1, "loss": 1.0}\n'}, "queued", "line 1 has no step"),
    ({"metrics.jsonl": '{"step": 3, "loss": NaN}\n'}, "queued", "line 1 has no loss"),
    ({"metrics.jsonl": '{"step": 3, "loss": 1e999}\n'}, "queued", "line 1 has no loss"),
    ({"metrics.jsonl": '{"step": 3, "loss": 1, "elapsed_s": Infinity}\n'}, "queued",
     "line 1 has a elapsed_s that is not a finite number"),
    ({"metrics.jsonl": '{"step": 3, "loss": 1, "max_steps": "40"}\n'}, "queued",
     "line 1 has a max_steps"),
    ({"metrics.jsonl": "[" * 100_000 + "\n"}, "queued", "line 1 is not JSON"),
    ({"metrics.jsonl": '{"step": 1, "loss": ' + "9" * 5000 + "}\n"}, "queued", "line 1 is not JSON"),
    ({"metrics.jsonl": b"\xff\xfe\n"}, "queued", "line 1 is not JSON"),
    ({"spec.json": "not json"}, "unknown", "spec.json: invalid JSON at line 1"),
    ({"spec.json": "[]"}, "unknown", "spec.json: a spec must be a table of fields"),
    ({"spec.json": '{"rank": "x"}'}, "unknown", "spec.json: rank must be an integer"),
    ({"spec.json": '{"nonsense": 1}'}, "unknown", "spec.json: unknown field `nonsense`"),
    ({"spec.json": '{"method": "bogus", "data": "d"}'}, "unknown", "spec.json: method must be one of"),
    ({"spec.json": '{"dtype": "int3", "data": "d"}'}, "unknown", "spec.json: dtype must be one of"),
    ({"spec.json": '{"rank": ' + "9" * 5000 + "}"}, "unknown", "spec.json: invalid JSON"),
    ({"spec.json": "[" * 100_000}, "unknown", "spec.json: nested too deeply"),
    ({"spec.json": b"\xff\xfe"}, "unknown", "spec.json: is not UTF-8 text"),
    ({"spec.json": " " * (1024 * 1024 + 1)}, "unknown", "spec.json: is larger than 1 MiB"),
    ({"status": "done\n", "spec.json": "not json"}, "done", "spec.json: invalid JSON at line 1"),
]


@pytest.mark.parametrize(("files", "state", "note"), HOSTILE,
                         ids=[f"{next(iter(f))}-{i}" for i, (f, _, _) in enumerate(HOSTILE)])
def test_a_run_with_a_damaged_file_is_listed_with_a_note_beside_the_others(
        cli, tiny_base, text_data, root, files, state, note):
    good = make(root, "good", tiny_base, text_data)
    good.metrics_path.write_text(json.dumps({"step": 10, "max_steps": 40, "loss": 2.0,
                                             "eval_loss": 2.5}) + "\n")
    good.set_status(State.FAILED, "the loss became nan at step 11")
    bad = make(root, "bad", tiny_base, text_data)
    for filename, content in files.items():
        write(bad, filename, content)

    assert bad.status().state.value == state  # never raises
    summary = bad.summary()
    assert summary.state.value == state and summary.note.count(note) == 1

    ran = cli("runs", "list", "--runs-dir", root)
    assert ran.code == 0 and ran.err == ""
    lines = {line.split()[0]: line for line in ran.out.splitlines()[1:]}
    assert set(lines) == {"good", "bad"}
    assert lines["good"].split()[:5] == ["good", "failed", "10/40", "2.0000", "2.5000"]
    assert lines["good"].endswith("  the loss became nan at step 11")
    assert lines["bad"].split()[1] == state and note in lines["bad"]
    assert "\x1b" not in ran.out


def test_a_damaged_metrics_line_leaves_the_others(tiny_base, text_data, root):
    run = make(root, "partly", tiny_base, text_data)
    rows = [{"step": 2, "max_steps": 40, "loss": 3.0}, {"step": 4, "max_steps": 40, "loss": 2.0}]
    run.metrics_path.write_text(json.dumps(rows[0]) + "\n{oops\n" + json.dumps(rows[1]) + "\n")
    assert run.metrics() == rows
    read = run.read_metrics()
    assert (read.lines, read.problem) == (3, f"{run.metrics_path}: line 2 is not JSON")
    assert run.read_metrics(2).rows == rows[1:]
    summary = run.summary()
    assert (summary.step, summary.max_steps, summary.loss) == (4, 40, 2.0)
    run.keep_metrics_until(4)  # a resume rewrites the file without the damaged line
    assert run.metrics_path.read_text().count("\n") == 2 and run.read_metrics().problem == ""


def test_a_run_with_an_unreadable_status_is_neither_resumed_nor_cancelled(cli, tiny_base, text_data, root):
    run = make(root, "odd", tiny_base, text_data, status="bogus\n")
    err = one_line_error(cli("runs", "resume", "odd", "--runs-dir", root))
    assert "cannot be resumed" in err and "status" in err
    write(run, "status", RUNNING)
    write(run, "pid", "garbage")
    assert "pid: not a process id" in one_line_error(cli("runs", "cancel", "odd", "--runs-dir", root))
    assert "pid: not a process id" in one_line_error(cli("runs", "resume", "odd", "--runs-dir", root))
    assert not (run.path / "command.txt").exists()


def test_files_of_a_run_that_are_links_are_not_written_through(cli, tiny_base, text_data, tmp_path, root):
    """A resumed run appends to log.txt: a link there must not carry that write elsewhere."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    run = make(root, "linked", tiny_base, text_data, status="interrupted\n")
    run.log_path.symlink_to(victim)
    err = one_line_error(cli("runs", "resume", "linked", "--runs-dir", root))
    assert "log.txt: is not a regular file" in err
    assert victim.read_text() == "untouched\n"
    assert run.status().state is State.INTERRUPTED and not (run.path / "pid").exists()
    run.log_path.unlink()
    run.metrics_path.symlink_to(victim)
    with pytest.raises(RunError, match="metrics.jsonl: is not a regular file"):
        run.append_metrics({"step": 1, "loss": 1.0})
    assert victim.read_text() == "untouched\n"


def test_fifos_in_a_run_never_hang_the_list(tiny_base, text_data, root):
    """A FIFO opened for reading waits for a writer: `spectui runs list` must not."""
    for filename in ("status", "metrics.jsonl", "log.txt"):
        run = make(root, f"fifo-{filename}", tiny_base, text_data)
        (run.path / filename).unlink(missing_ok=True)
        os.mkfifo(run.path / filename)
    live = make(root, "fifo-pid", tiny_base, text_data, status=RUNNING)
    os.mkfifo(live.path / "pid")
    started = time.monotonic()
    for run in list_runs(root):
        run.summary()
        run.log_tail()
        run.log_since(0)
    assert time.monotonic() - started < 5
    listed = subprocess.run([sys.executable, "-m", "spectui", "runs", "list", "--runs-dir", root],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert listed.returncode == 0, listed.stderr
    assert "status: is not a regular file" in listed.stdout
    assert "pid: is not a regular file" in listed.stdout
    assert "metrics.jsonl: is not a regular file" in listed.stdout


def test_an_unlistable_runs_directory_lists_nothing_for_pollers_and_fails_for_the_cli(cli, tmp_path):
    file = tmp_path / "runs"
    file.write_text("x")
    assert list_runs(file) == []  # the TUI's start-up (reattach_runs) goes on
    with pytest.raises(RunError, match="is a file, not a directory"):
        list_runs(file, strict=True)


# -- 4. a checkpoint state that is not a safe pickle ------------------------------------------

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "spectui-unpickled-marker"


class Payload:
    """Would run code when unpickled; weights_only loading must refuse it instead."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def good_state(step: int = 3) -> dict:
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return {"step": step, "elapsed_s": 1.5, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(), "rng_cuda": []}


def state_file(tmp_path: Path, content) -> Path:
    checkpoint = tmp_path / "checkpoints" / "step-3"
    checkpoint.mkdir(parents=True)
    path = checkpoint / STATE_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


def truncated_state() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(good_state(), buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(("content", "problem"), [
    ({"payload": Payload()}, "holds more than tensors and plain values"),
    (b"", "is empty"),
    (b"garbage" * 50, "holds more than tensors and plain values"),
    (truncated_state(), "is truncated or damaged"),
    ([1, 2, 3], "it holds a list, not a table"),
    ({"step": 3}, "it has no elapsed_s"),
    ({**good_state(), "step": "3"}, "its step is not a whole number"),
    ({**good_state(), "step": -1}, "negative"),
    ({**good_state(), "elapsed_s": float("nan")}, "not finite"),
    ({**good_state(), "rng_cpu": torch.zeros(3)}, "not byte tensors"),
    ({**good_state(), "optimizer": {}}, "lacks state or param_groups"),
], ids=["object", "empty", "garbage", "truncated", "list", "no-elapsed", "step-text",
        "step-negative", "elapsed-nan", "rng-floats", "optimizer-empty"])
def test_a_checkpoint_state_that_is_not_one_is_a_sentence_naming_it(tmp_path, content, problem):
    MARKER.unlink(missing_ok=True)
    path = state_file(tmp_path, content)
    with pytest.raises(FileInputError) as raised:
        load_state(path)
    assert str(raised.value).startswith(f"{path}: ") and problem in str(raised.value)
    assert "\n" not in str(raised.value) and not MARKER.exists()


def test_a_checkpoint_state_must_fit_its_directory_and_the_optimizer(tmp_path):
    parameters = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW(parameters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    path = state_file(tmp_path, good_state(step=7))
    with pytest.raises(FileInputError, match="says step 7, but lies in step-3"):
        restore(path.parent, optimizer, scheduler)
    path.unlink()
    torch.save(good_state(step=3), path)  # one parameter; this optimizer has two
    with pytest.raises(FileInputError, match="does not fit this run"):
        restore(path.parent, optimizer, scheduler)


@pytest.mark.parametrize(("content", "problem"), [
    (None, "holds more than tensors and plain values"),  # the pickled Payload
    (b"\x80\x04garbage", "holds more than tensors and plain values"),
    (b"PK\x03\x04" + bytes(64), "is truncated or damaged"),
], ids=["object", "raw-pickle", "broken-zip"])
@pytest.mark.slow  # trains a few steps first
def test_resuming_from_an_unsafe_state_fails_the_run_naming_the_file(
        tiny_base, text_data, tmp_path, content, problem):
    from spectui.finetune import runner

    torch.set_num_threads(1)
    run = create_run(RunSpec(base=str(tiny_base), data=str(text_data), device="cpu", rank=2,
                             max_steps=4, batch_size=4, log_every=2, eval_every=0, save_every=2),
                     tmp_path)
    assert runner.execute(run) is State.DONE, run.status().message
    shutil.rmtree(run.output_dir)
    run.set_status(State.INTERRUPTED, runs.INTERRUPTED_MESSAGE)
    state = run.checkpoint_dir(4) / STATE_FILE
    MARKER.unlink(missing_ok=True)
    if content is None:
        torch.save({"payload": Payload()}, state)
    else:
        state.write_bytes(content)
    assert runner.execute(run) is State.FAILED
    message = run.status().message
    assert message.startswith(f"{state}: {problem}") and "\n" not in message, message
    assert "unexpected" not in message and not MARKER.exists()
    assert not run.output_dir.exists()


# -- 5. nothing is downloaded ----------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_hub_id_not_in_the_local_cache_is_refused_before_any_run(cli, no_network, text_data, root):
    base = "spectui-tests-nobody/not-a-cached-model"
    problem = RunSpec(base=base, data=str(text_data)).errors()["base"]
    assert "downloads nothing" in problem and base in problem
    err = one_line_error(cli("train", "--base", base, "--data", text_data, "--runs-dir", root))
    assert "downloads nothing" in err
    assert not root.exists()


def test_a_hub_id_in_the_local_cache_is_accepted(no_network, text_data, tiny_base, monkeypatch):
    import spectui.checkpoint.files as files

    monkeypatch.setattr(files, "_hub_cache_snapshot",
                        lambda ref: tiny_base if ref == "org/cached" else None)
    assert RunSpec(base="org/cached", data=str(text_data)).errors() == {}


def test_the_training_process_is_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = runs._child_env(RunSpec())
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert set(OFFLINE_ENV.items()) <= set(env.items())


# -- never anything but InputError -----------------------------------------------------------

def test_summary_and_status_raise_nothing_for_a_run_without_files(tmp_path):
    run = Run(tmp_path / "empty")
    status = run.status()  # queued, were its spec there
    assert status.state is State.UNKNOWN and "spec.json: file not found" in status.message
    summary = run.summary()
    assert summary.note == status.message and summary.problem == ""
    with pytest.raises(SpecError):
        run.spec()
    assert isinstance(SpecError("x"), InputError)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
METRIC_KEYS = ["step", "max_steps", "loss", "eval_loss", "eval_accuracy", "elapsed_s", "lr", "epoch"]
SPEC_KEYS = [f.name for f in fields(RunSpec)] + ["bogus"]
LINE = st.one_of(
    st.dictionaries(st.sampled_from(METRIC_KEYS), JSON, max_size=6).map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=40),
)
ANY = st.one_of(st.binary(max_size=400), st.text(max_size=400))
FILES = st.fixed_dictionaries({}, optional={
    "status": st.one_of(ANY, st.tuples(
        st.sampled_from([state.value for state in State] + ["", "Running", "done "]),
        st.text(max_size=80)).map("\n".join)),
    "pid": st.one_of(ANY, st.tuples(st.integers(), st.integers()).map(lambda t: f"{t[0]} {t[1]}"),
                     st.tuples(st.integers(1, 2**22), st.text(max_size=8)).map(lambda t: f"{t[0]} {t[1]}")),
    "metrics.jsonl": st.one_of(ANY, st.tuples(st.lists(LINE, max_size=8), st.sampled_from(["", "\n"]))
                               .map(lambda t: "\n".join(t[0]) + t[1])),
    "spec.json": st.one_of(ANY, JSON.map(json.dumps),
                           st.dictionaries(st.sampled_from(SPEC_KEYS), JSON, max_size=6).map(json.dumps)),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=FILES)
def test_whatever_a_runs_files_hold_it_is_listed_and_only_input_errors_are_raised(
        cli, tiny_base, text_data, tmp_path_factory, files):
    root = tmp_path_factory.mktemp("runs")
    run = make(root, "target", tiny_base, text_data)
    for filename, content in files.items():
        write(run, filename, content)
    for read in (run.status, run.summary, run.metrics, run.log_tail):
        with contextlib.suppress(InputError):  # the one kind allowed; anything else fails
            read()
    started = time.monotonic()
    ran = cli("runs", "list", "--runs-dir", root)
    assert time.monotonic() - started < 5
    assert ran.code == 0 and ran.err == "", ran
    assert ran.out.count("\n") == 2 and ran.out.splitlines()[1].split()[0] == "target", ran.out


# -- what the hostile battery found ----------------------------------------------------------

@pytest.mark.parametrize(("content", "problem"), [
    ('{"text": "a", "n": ' + "9" * 5000 + "}\n", "malformed JSON at line 1"),
    ("[" * 100_000 + "]" * 100_000 + "\n", "malformed JSON at line 1"),
])
def test_data_lines_that_json_cannot_hold_are_one_line(cli, tiny_base, tmp_path, content, problem):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    ran = cli("train", "--base", tiny_base, "--data", data, "--runs-dir", tmp_path / "runs")
    assert problem in one_line_error(ran)


def test_a_csv_field_past_the_csv_limit_is_one_line(cli, tiny_base, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text\n" + "x" * 200_000 + "\n")
    assert "unreadable CSV" in one_line_error(cli("train", "--base", tiny_base, "--data", data,
                                                  "--runs-dir", tmp_path / "runs"))


def test_a_label_that_would_size_a_huge_head_is_refused(cli, tiny_base, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "a b", "label": 10**12}) + "\n")
    ran = cli("train", "--base", tiny_base, "--data", data, "--task", "classification",
              "--runs-dir", tmp_path / "runs")
    assert "too many classes" in one_line_error(ran)


def test_a_seed_past_32_bits_is_refused_before_launch(cli, tiny_base, text_data, tmp_path):
    ran = cli("train", "--base", tiny_base, "--data", text_data, "--seed", 2**70, "--runs-dir", tmp_path / "runs")
    assert "seed must be from 0 to 4294967295" in one_line_error(ran)


def test_cancel_never_signals_a_process_a_forged_pid_file_names(cli, tiny_base, text_data, root):
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        run = make(root, "forged", tiny_base, text_data, status="running\n")
        write(run, "pid", f"{sleeper.pid} {runs._process_start(sleeper.pid)}\n")
        assert "not started for this run" in one_line_error(cli("runs", "cancel", "forged", "--runs-dir", root))
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
