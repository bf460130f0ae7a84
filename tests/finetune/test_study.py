"""Studies: the spec (round trip, members, one sentence per mistake), reruns that skip what is
done, the results file and its views, and (slow) tiny studies from the CLI: every column of the
table, a rerun that trains nothing, and a member that crashes without losing the others."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest
from conftest import sentences

from spectui.finetune import runs
from spectui.finetune.runs import Run, State, create_run, find_run
from spectui.finetune.study import (
    Study,
    StudyError,
    StudySpec,
    list_studies,
    load_study_spec,
    open_study,
    save_study_spec,
    saved_name,
    train_members,
)
from spectui.study_results import (
    TABLE_EPSILONS,
    BaseScores,
    MemberResult,
    StudyResults,
    StudyResultsError,
    TaskInfo,
    effective_rank_vs_rank,
    forgetting_vs_rank,
    intruders_vs_rank,
    matched,
    read_results,
    report_section,
    results_table,
    write_results,
)

TABLE_KEYS = {"member", "rank", "lr", "steps", "task_loss", "reference_loss", "effective_rank",
              "state"} | {f"intruders_{eps}" for eps in TABLE_EPSILONS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Pre-training-like text for the tiny base: other sentences of its vocabulary."""
    path = tmp_path_factory.mktemp("reference") / "reference.txt"
    path.write_text(" . ".join(sentences(40, 7)) + "\n")
    return path


@pytest.fixture
def spec(tiny_base, text_data, reference, tmp_path) -> StudySpec:
    return StudySpec(base=str(tiny_base), data=str(text_data), ranks=[1, 2], full=True,
                     lr_grid=[1e-2], full_lr_grid=[1e-3], steps=3, reference=str(reference),
                     name="tiny", run={"batch_size": 4, "device": "cpu", "save_every": 0,
                                       "eval_every": 0}).resolved(tmp_path / "runs")


# -- the spec -------------------------------------------------------------------------------------

def test_the_spec_round_trips_through_json_and_toml(spec, tmp_path):
    assert spec.errors() == {}
    save_study_spec(spec, tmp_path / "study.json")
    assert load_study_spec(tmp_path / "study.json") == spec
    toml = tmp_path / "study.toml"
    toml.write_text(
        f'base = "{spec.base}"\ndata = "{spec.data}"\nranks = [1, 2]\nfull = true\n'
        f'lr_grid = [1e-2]\nfull_lr_grid = [1e-3]\nsteps = 3\nreference = "{spec.reference}"\n'
        f'name = "tiny"\nout = "{spec.out}"\nruns_dir = "{spec.runs_dir}"\n'
        '[run]\nbatch_size = 4\ndevice = "cpu"\nsave_every = 0\neval_every = 0\n')
    assert load_study_spec(toml) == spec


def test_members_are_runs_named_by_line_and_stage(spec, tmp_path):
    members = spec.members()
    assert [m.name for m in members] == ["tiny-r1", "tiny-r2", "tiny-full"]
    r2, full = members[1].spec, members[2].spec
    assert (r2.method, r2.rank, r2.lora_alpha, r2.lr, r2.max_steps, r2.batch_size) == (
        "lora", 2, 4.0, 1e-2, 3, 4)
    assert (full.method, full.lr, full.start_from) == ("full", 1e-3, None)
    grid = StudySpec(**{**spec.to_dict(), "lr_grid": [1e-3, 2e-5, 1e30], "full": False, "ranks": [8]})
    assert [m.name for m in grid.members()] == ["tiny-r8-lr0.001", "tiny-r8-lr2e-05", "tiny-r8-lr1e30"]
    sequence = StudySpec(**{**spec.to_dict(), "data": None, "sequence": ["a.jsonl", "b.jsonl"]})
    names = [(m.name, m.after, m.stage, m.task) for m in sequence.members()]
    assert names[:2] == [("tiny-r1-stage1", None, 1, 0), ("tiny-r1-stage2", "tiny-r1-stage1", 2, 1)]
    assert names[-1] == ("tiny-full-stage2", "tiny-full-stage1", 2, 1)
    one_line = StudySpec(**{**sequence.to_dict(), "ranks": [4], "full": False})
    assert [m.name for m in one_line.members()] == ["tiny-stage1", "tiny-stage2"]
    assert one_line.members()[1].spec.start_from == "tiny-stage1"


@pytest.mark.parametrize(("changes", "message"), [
    ({"sequence": ["x.jsonl"]}, "give either data (one task) or sequence"),
    ({"ranks": [], "full": False}, "nothing to train"),
    ({"ranks": [2, 2]}, "ranks must not repeat"),
    ({"lr_grid": []}, "lr_grid must hold distinct learning rates"),
    ({"run": {"task": "classification"}}, "run.task must be causal-lm"),
    ({"run": {"eval_fraction": 0.0}}, "the task metric needs held-out examples"),
    ({"run": {"dropout": 2.0}}, "dropout must be between 0 and 0.9"),
    ({"data": "/no/such.jsonl"}, "data file /no/such.jsonl does not exist"),
    ({"reference": "/no/such.txt"}, "reference text /no/such.txt does not exist"),
    ({"reference": None}, "a reference text is required"),
    ({"name": "a/b"}, "name must be a plain directory name"),
])
def test_each_mistake_gets_one_sentence(spec, changes, message):
    wrong = StudySpec(**{**spec.to_dict(), **changes})
    with pytest.raises(StudyError, match=re.escape(message)):
        wrong.check()


@pytest.mark.parametrize(("data", "message"), [
    ({"alpha": "3x"}, "alpha must be 2r or a number"),
    ({"ranks": [0]}, "ranks must be a list of whole numbers of at least 1"),
    ({"lr_grid": [0]}, "lr_grid must be a list of numbers greater than 0"),
    ({"bogus": 1}, "unknown field `bogus`"),
    ({"run": {"lr": 1e-3}}, "run.lr is set by the study itself"),
    ({"run": {"batch_size": "4"}}, "run: batch_size must be an integer"),
    ({"steps": True}, "steps must be an integer"),
])
def test_a_spec_file_with_a_wrong_value_is_named(tmp_path, data, message):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"base": "b", "data": "d", **data}))
    with pytest.raises(StudyError, match=f"{path}: {message}"):
        load_study_spec(path)


def test_the_cli_says_a_bad_spec_in_one_line_with_exit_2(cli, spectui, tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text("ranks = [1, \n")
    ran = cli("study", path, "--runs-dir", tmp_path)
    assert ran.code == 2 and ran.err.count("\n") == 1 and str(path) in ran.err, ran
    with pytest.raises(SystemExit) as parsing:  # argparse's own exit, in one line
        spectui.parse_args(["study", "--base", str(tmp_path), "--data", str(path), "--ranks", "1,x"])
    assert parsing.value.code == 2
    assert "'1,x' is not comma-separated whole numbers" in capsys.readouterr().err


def test_the_train_sequence_flags_refuse_what_does_not_apply(cli, tiny_base, text_data, tmp_path):
    ran = cli("train", "--base", tiny_base, "--sequence", f"{text_data},{text_data}",
              "--out", tmp_path / "o", "--runs-dir", tmp_path)
    assert ran.code == 2 and "--out does not apply" in ran.err
    ran = cli("train", "--base", tiny_base, "--data", text_data, "--reference", text_data)
    assert ran.code == 2 and "--reference measures forgetting along a --sequence" in ran.err


# -- reruns ---------------------------------------------------------------------------------------

def done_run(member, root: Path) -> Run:
    """A member's run as a finished one leaves it (an output, status done), without training."""
    run = create_run(member.spec, root)
    run.output_dir.mkdir(parents=True)
    (run.output_dir / ("config.json" if member.line.method == "full" else "adapter_config.json")
     ).write_text("{}")
    run.set_status(State.DONE)
    return run


def test_a_rerun_skips_members_already_done(spec):
    study = open_study(spec)
    root = study.runs_root()
    for member in spec.members():
        done_run(member, root)
    seen, said = [], []
    outcomes = train_members(study, lambda member, run: seen.append((member.name, run.name)),
                             threading.Event(), said.append, slots=[None])
    names = [m.name for m in spec.members()]
    assert seen == [(name, name) for name in names]
    assert {name: outcome.state for name, outcome in outcomes.items()} == dict.fromkeys(names, State.DONE)
    assert all("done before, kept" in line for line in said)
    assert not any((root / name / "pid").exists() for name in names)  # nothing was started
    assert [(member.name, run.name) for member, run in study.member_runs()] == list(zip(names, names))


def test_a_rerun_of_a_sequence_skips_done_stages_and_refuses_a_changed_run(spec):
    sequence = StudySpec(**{**spec.to_dict(), "data": None, "ranks": [1], "full": False,
                            "sequence": [spec.data, spec.data]})
    study = open_study(sequence)
    first, second = sequence.members()
    done_run(first, study.runs_root())
    changed = create_run(StudySpec(**{**sequence.to_dict(), "steps": 5}).members()[1].spec,
                         study.runs_root())
    outcomes = train_members(study, lambda member, run: None, threading.Event(), lambda line: None,
                             slots=[None])
    assert outcomes[first.name].state is State.DONE
    assert outcomes[second.name].state is State.FAILED
    assert "exists with other settings (max_steps 5 instead of 3)" in outcomes[second.name].message
    assert not (changed.path / "pid").exists()


def test_a_study_directory_holding_something_else_is_refused(spec, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "file").write_text("x")
    with pytest.raises(StudyError, match="exists and is not a study directory"):
        open_study(StudySpec(**{**spec.to_dict(), "out": str(tmp_path / "elsewhere")}))


def test_a_study_made_but_not_started_is_not_running(spec):
    study = open_study(spec)
    assert study.status().state is State.QUEUED and not study.running()
    assert [run for _, run in study.member_runs()] == [None, None, None]
    assert Study(study.path).spec() == spec


# -- results and views ----------------------------------------------------------------------------

def member(name, rank, lr, task_loss, reference_loss, intruders, effective_rank, state="done",
           stage=None, task=0):
    return MemberResult(name=name, line=name, method="full" if rank is None else "lora", rank=rank,
                        lr=lr, task=task, stage=stage, state=state, steps=3, task_loss=task_loss,
                        reference_loss=reference_loss,
                        intruders={str(eps): intruders for eps in (0.1, 0.5, 0.6, 0.7, 0.8, 0.9)},
                        median_effective_rank=effective_rank, median_rel_norm=0.01, matrices=8,
                        model="/m")


def rank_results() -> StudyResults:
    return StudyResults(
        name="s", kind="study", base="/b", reference="/r", k=10, epsilons=[0.1, 0.5],
        tasks=[TaskInfo("task", "/d", "/h")], base_scores=BaseScores(2.0, [6.0]), members=[
            member("s-r1-lr1", 1, 1e-3, [1.5], 3.0, 9, 1.0),
            member("s-r1-lr3", 1, 3e-3, [1.1], 4.0, 12, 1.0),
            member("s-r8-lr1", 8, 1e-3, [1.2], 2.5, 3, 6.0),
            member("s-full", None, 2e-5, [1.25], 2.1, 0, 60.0),
            MemberResult(name="s-r8-lr3", line="r8-lr3", method="lora", rank=8, lr=3e-3, task=0,
                         stage=None, state="failed", message="the loss became nan"),
        ])


def test_results_round_trip_and_damage_is_named(tmp_path):
    results = rank_results()
    write_results(tmp_path / "results.json", results)
    assert read_results(tmp_path / "results.json") == results
    data = results.to_dict()
    data["members"][0]["intruders"]["0.5"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(StudyResultsError, match=f"{tmp_path / 'bad.json'}: intruders at ε 0.5"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text("[1, 2")
    with pytest.raises(StudyResultsError, match="worse.json"):
        read_results(tmp_path / "worse.json")


def test_the_views_compare_ranks_at_matched_task_loss():
    results = rank_results()
    table = results_table(results)
    assert {column.key for column in table.columns} == TABLE_KEYS
    assert table.rows[3]["rank"] == "full" and table.rows[4]["task_loss"] is None
    chosen = matched(results)
    assert chosen.target == 1.25  # the best loss every rank reached: full's
    assert [m.name for m in chosen.members] == ["s-r1-lr3", "s-r8-lr1", "s-full"]
    curves = intruders_vs_rank(results)
    assert [curve.label for curve in curves] == [f"ε={eps:g}" for eps in TABLE_EPSILONS]
    assert curves[0].x == ["r1", "r8", "full"] and curves[0].y == [12.0, 3.0, 0.0]
    assert forgetting_vs_rank(results)[0].y == [4.0, 2.5, 2.1]
    assert effective_rank_vs_rank(results).y == [1.0, 6.0, 60.0]
    section = report_section(results)
    assert section["matched_members"] == ["s-r1-lr3", "s-r8-lr1", "s-full"]
    json.dumps(section)  # JSON-ready


# -- tiny studies, end to end ---------------------------------------------------------------------

@pytest.fixture
def processes(monkeypatch, tmp_path):
    """Runs inherit the environment: one thread is far faster for a tiny model on 2 cores; a
    cache of the test's own."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def study_args(tiny_base, text_data, reference, root, *extra):
    return ["study", "--base", tiny_base, "--data", text_data, "--reference", reference,
            "--steps", "3", "--batch-size", "4", "--device", "cpu", "--save-every", "0",
            "--eval-every", "0", "--runs-dir", root, "--name", "tiny", *extra]


@pytest.mark.slow
def test_a_tiny_study_gives_every_column_and_a_rerun_trains_nothing(
        cli, processes, tiny_base, text_data, reference, tmp_path):
    root = tmp_path / "runs"
    ran = cli(*study_args(tiny_base, text_data, reference, root, "--ranks", "1,2", "--full",
                          "--lr-grid", "1e-2", "--full-lr-grid", "1e-3", "--json"))
    assert ran.code == 0, ran.err
    printed = json.loads(ran.out)
    assert printed["state"] == "done" and printed["study_dir"] == str(root / "tiny")
    results = read_results(root / "tiny" / "results.json")
    assert [m.name for m in results.members] == ["tiny-r1", "tiny-r2", "tiny-full"]
    table = printed["views"]["table"]
    assert {column["key"] for column in table["columns"]} == TABLE_KEYS
    for row in table["rows"]:
        assert all(row[key] is not None for key in TABLE_KEYS), row
        assert row["steps"] == 3 and row["state"] == "done"
    effective = {row["rank"]: row["effective_rank"] for row in table["rows"]}
    assert effective[1] == pytest.approx(1.0, abs=1e-3) and effective[2] <= 2.0 + 1e-6
    assert effective["full"] > 2.0
    assert results.base_scores is not None
    assert printed["views"]["intruders_vs_rank"][0]["x"] == ["r1", "r2", "full"]
    saved = load_study_spec(root / "tiny" / "study.json")
    assert saved.members()[0].spec.data == str(text_data)

    again = cli("study", root / "tiny" / "study.json", "--json")
    assert again.code == 0, again.err
    assert again.err.count("done before, kept") == 3
    for name in ("tiny-r1", "tiny-r2", "tiny-full"):
        assert len((root / name / "command.txt").read_text().splitlines()) == 1  # not trained again
    assert read_results(root / "tiny" / "results.json").members == results.members


@pytest.mark.slow
def test_a_member_that_crashes_leaves_the_others_results(
        cli, processes, tiny_base, text_data, reference, tmp_path):
    root = tmp_path / "runs"
    ran = cli(*study_args(tiny_base, text_data, reference, root, "--ranks", "2",
                          "--lr-grid", "1e30,1e-2", "--json"))
    assert ran.code == 1
    assert "1 of 2 members not done" in ran.err and "tiny-r2-lr1e30 failed" in ran.err
    printed = json.loads(ran.out)
    assert printed["state"] == "failed"
    crashed, kept = read_results(root / "tiny" / "results.json").members
    assert crashed.state == "failed" and "the loss became" in crashed.message
    assert not crashed.evaluated
    assert kept.state == "done" and kept.evaluated and kept.intruders_at(0.5) is not None
    assert find_run("tiny-r2-lr0.01", root).status().state is State.DONE


class FinishingProcess:
    """Stands in for a member's training process: running until polled once, then done."""

    def __init__(self, run: Run):
        self.run, self.polls = run, 0
        run.set_status(State.RUNNING)
        (run.path / "pid").write_text(f"{os.getpid()} {runs._process_start(os.getpid())}\n")

    def poll(self):
        self.polls += 1
        if self.polls > 1:
            self.run.set_status(State.DONE)
        return None


def test_members_train_side_by_side_one_per_gpu(spec, monkeypatch):
    import torch

    from spectui.finetune import study as study_module

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert study_module.device_slots(spec) == [None]  # the spec pins the CPU
    auto = StudySpec(**{**spec.to_dict(), "run": {**spec.run, "device": "auto"}})
    assert study_module.device_slots(auto) == ["cuda:0", "cuda:1"]
    started, live = [], []
    monkeypatch.setattr(Run, "start", lambda run: started.append(run) or FinishingProcess(run))
    study = open_study(auto)
    original = study_module._start_ready

    def watched(pending, active, *args):
        original(pending, active, *args)
        live.append(len(active))

    monkeypatch.setattr(study_module, "_start_ready", watched)
    outcomes = train_members(study, lambda member, run: None, threading.Event(), lambda line: None)
    assert all(outcome.state is State.DONE for outcome in outcomes.values())
    assert [run.spec().device for run in started] == ["cuda:0", "cuda:1", "cuda:0"]
    assert max(live) == 2  # two members at once, one on each GPU


def test_study_results_listing(spec):
    study = open_study(spec)
    assert [found.path for found in list_studies(spec.runs_dir)] == [study.path]
    assert saved_name(study.path) == "tiny"


@pytest.mark.slow
def test_a_detached_study_cancelled_goes_on_where_it_stopped_when_run_again(
        cli, processes, tiny_base, text_data, reference, tmp_path):
    import time

    root = tmp_path / "runs"
    ran = cli(*study_args(tiny_base, text_data, reference, root, "--ranks", "2", "--lr-grid",
                          "1e-2", "--steps", "300", "--save-every", "5", "--detach"))
    assert ran.code == 0 and ran.out.strip() == str(root / "tiny"), ran.err
    study, member = Study(root / "tiny"), Run(root / "tiny-r2")
    deadline = time.monotonic() + 300
    while not (member.path.exists() and member.checkpoints()):
        assert time.monotonic() < deadline, "the member never wrote a checkpoint"
        time.sleep(0.2)
    assert study.running()
    study.cancel()
    while study.running() or member.status().state in (State.QUEUED, State.RUNNING):
        assert time.monotonic() < deadline, "the study did not stop"
        time.sleep(0.2)
    assert study.status().state is State.CANCELLED
    assert member.status().state is State.CANCELLED

    again = cli("study", study.spec_path)
    assert again.code == 0, again.err
    assert "cancelled before, resumed" in again.out
    assert len((member.path / "command.txt").read_text().splitlines()) == 2
    assert "resuming from" in member.log_path.read_text()
    assert read_results(study.results_path).members[0].steps == 300
