"""Intruders along a run: each checkpoint scanned once, with the counts `spectui scan` gives."""

from __future__ import annotations

import json
import shutil
import threading

from spectui.cache import Cache
from spectui.finetune.runs import Run, State, create_run
from spectui.finetune.spec import RunSpec
from spectui.run_intruders import follow_runs, intruders_path, read_intruders, scan_new_checkpoints


def run_with_checkpoints(root, base, checkpoints: dict[int, object]) -> Run:
    """A run directory laid out as the runner writes it, with the given models as checkpoints."""
    run = create_run(RunSpec(base=str(base), data=str(root / "unused.jsonl")), root / "runs")
    for step, model in checkpoints.items():
        shutil.copytree(model, run.checkpoint_dir(step) / "model")
    return run


def spectui_scan(cli, base, tuned, cache_dir, *options) -> dict:
    ran = cli("scan", base, tuned, "--json", "--device", "cpu", "--cache-dir", cache_dir, *options)
    assert ran.code == 0
    return json.loads(ran.out)


def test_checkpoints_are_scanned_once_with_the_counts_of_spectui_scan(cli, tiny, tmp_path):
    run = run_with_checkpoints(tmp_path, tiny / "base", {2: tiny / "lora", 4: tiny / "full"})
    cache = Cache(tmp_path / "cache")
    added = scan_new_checkpoints(run, cache, device="cpu")
    lines = intruders_path(run).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4] == [p.step for p in added]
    for point, (_, checkpoint) in zip(read_intruders(run), run.checkpoints()):
        scanned = spectui_scan(cli, tiny / "base", checkpoint / "model", tmp_path / "cli-cache")
        assert point.total_intruders == scanned["total_intruders"]
        assert point.per_matrix == {m["name"]: m["intruders"] for m in scanned["matrices"]}
        other = spectui_scan(cli, tiny / "base", checkpoint / "model", tmp_path / "cli-cache",
                             "--k", "5", "--eps", "0.73")
        assert point.total(5, 0.73) == other["total_intruders"]
    assert sum(point.total_intruders for point in added) > 0

    assert scan_new_checkpoints(run, cache, device="cpu") == []
    assert intruders_path(run).read_text().splitlines() == lines


def test_follow_scans_the_final_output_and_reports_a_base_that_does_not_open(tiny, tmp_path):
    done = run_with_checkpoints(tmp_path, tiny / "base", {3: tiny / "lora"})
    shutil.copytree(tiny / "full", done.output_dir)
    done.metrics_path.write_text(json.dumps({"step": 6, "max_steps": 6, "loss": 1.0}) + "\n")
    done.set_status(State.DONE)
    broken = run_with_checkpoints(tmp_path, tmp_path / "no-such-base", {3: tiny / "lora"})
    broken.set_status(State.FAILED, "the base did not load")
    reported = []

    follow_runs([done, broken], Cache(tmp_path / "cache"), threading.Event(),
                on_error=lambda run, message: reported.append((run.name, message)), device="cpu")

    assert [point.step for point in read_intruders(done)] == [3, 6]
    assert len(reported) == 1 and reported[0][0] == broken.name and "no-such-base" in reported[0][1]
    assert not intruders_path(broken).exists()


def test_a_run_whose_files_turn_bad_while_followed_is_reported_not_raised(tiny, tmp_path):
    import os

    damaged = run_with_checkpoints(tmp_path, tiny / "base", {3: tiny / "lora"})
    (damaged.path / "spec.json").write_text("{ not json")
    fifo = run_with_checkpoints(tmp_path, tiny / "base", {3: tiny / "lora"})
    os.mkfifo(intruders_path(fifo))
    reported = []
    follow_runs([damaged, fifo], Cache(tmp_path / "cache"), threading.Event(),
                on_error=lambda run, message: reported.append(message), device="cpu")
    assert len(reported) == 2
    assert any("spec.json" in m for m in reported) and any("not a regular file" in m for m in reported)
