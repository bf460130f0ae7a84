"""Sequential fine-tuning: a run that starts from another run's output (start_from), a LoRA stage
that trains on the previous adapter merged exactly as PEFT merges it, a full stage that trains on
the previous weights, and (slow) `spectui train --sequence` whose forgetting matrix and intruders
are the probes and scans of each stage's model done directly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import sentences
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spectui.finetune import runner
from spectui.finetune.merge import tuned_model
from spectui.finetune.runs import Run, RunError, State, create_run
from spectui.finetune.spec import RunSpec
from spectui.study_results import forgetting_matrix, intruders_vs_stage, read_results


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices are far faster on one thread, above all on a shared two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings(base: Path, data: Path, **changes) -> RunSpec:
    values = {"base": str(base), "data": str(data), "device": "cpu", "rank": 2, "lr": 1e-2,
              "max_steps": 3, "batch_size": 4, "save_every": 0, "eval_every": 0}
    return RunSpec(**{**values, **changes})


def trained(root: Path, spec: RunSpec) -> Run:
    run = create_run(spec, root)
    assert runner.execute(run) is State.DONE, run.status().message
    return run


def fake_done(root: Path, name: str, base: Path, data: Path, output: str) -> Run:
    """A finished run without training: its output is an adapter or a full model by its files."""
    run = create_run(settings(base, data, name=name), root)
    run.output_dir.mkdir()
    (run.output_dir / output).write_text("{}")
    run.set_status(State.DONE)
    return run


# -- start_from, without training ----------------------------------------------------------------

def test_start_from_is_a_run_name_or_a_directory(tiny_base, text_data, tmp_path):
    assert settings(tiny_base, text_data, start_from="stage1").errors() == {}
    assert settings(tiny_base, text_data, start_from=str(tmp_path)).errors() == {}
    assert settings(tiny_base, text_data, start_from="./nowhere").errors() == {
        "start_from": "start_from ./nowhere is neither a run's name nor a directory"}


def test_a_new_run_names_the_directory_it_starts_from(tiny_base, text_data, tmp_path):
    root = tmp_path / "runs"
    first = fake_done(root, "first", tiny_base, text_data, "adapter_config.json")
    second = create_run(settings(tiny_base, text_data, name="second", start_from="first"), root)
    assert second.spec().start_from == str(first.path)
    assert second.starting_model() == str(second.start_dir)  # an adapter: merged first
    with pytest.raises(RunError, match="start_from absent: neither a run in"):
        create_run(settings(tiny_base, text_data, start_from="absent"), root)
    other_base = tmp_path / "other"
    other_base.mkdir()
    (other_base / "config.json").write_text("{}")
    with pytest.raises(RunError, match=f"that run was trained from base {tiny_base}"):
        create_run(settings(other_base, text_data, start_from="first"), root)


def test_a_full_model_is_trained_on_as_it_is_and_a_run_not_done_is_refused(
        tiny_base, text_data, tmp_path):
    root = tmp_path / "runs"
    full = fake_done(root, "full", tiny_base, text_data, "config.json")
    after = create_run(settings(tiny_base, text_data, name="after", start_from="full"), root)
    assert after.starting_model() == str(full.output_dir)
    full.set_status(State.FAILED, "no")
    with pytest.raises(RunError, match="starts from run full, which is failed, not done"):
        after.starting_model()


def test_runs_that_start_from_each_other_are_refused(tiny_base, text_data, tmp_path):
    root = tmp_path / "runs"
    one = fake_done(root, "one", tiny_base, text_data, "adapter_config.json")
    two = fake_done(root, "two", tiny_base, text_data, "adapter_config.json")
    for run, other in ((one, two), (two, one)):
        saved = json.loads((run.path / "spec.json").read_text())
        (run.path / "spec.json").write_text(json.dumps({**saved, "start_from": str(other.path)}))
    with pytest.raises(RunError, match="lead back to it"):
        one.starting_model()


# -- stages trained in process ---------------------------------------------------------------------

def test_a_lora_stage_trains_on_the_previous_adapter_merged_as_peft_merges_it(
        tiny_base, text_data, tmp_path):
    root = tmp_path / "runs"
    first = trained(root, settings(tiny_base, text_data, name="first"))
    second = trained(root, settings(tiny_base, text_data, name="second", start_from="first",
                                    max_steps=2))
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, first.output_dir).merge_and_unload().state_dict()
    start = load_file(second.start_dir / "model.safetensors")
    assert set(start) <= set(expected)
    assert all(torch.equal(start[name], expected[name]) for name in start)
    config = json.loads((second.output_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(second.start_dir)

    merged = tuned_model(second)  # the stage's whole model, to compare with the original base
    assert merged == second.merged_dir
    on_start = AutoModelForCausalLM.from_pretrained(second.start_dir, dtype=torch.float32)
    expected = PeftModel.from_pretrained(on_start, second.output_dir).merge_and_unload().state_dict()
    written = load_file(merged / "model.safetensors")
    assert all(torch.equal(written[name], expected[name]) for name in written)
    assert tuned_model(first) == first.output_dir  # an adapter of the base itself: as it is


def test_a_full_stage_trains_on_the_previous_weights(tiny_base, text_data, tmp_path, capsys):
    root = tmp_path / "runs"
    first = trained(root, settings(tiny_base, text_data, name="first", method="full", lr=1e-3))
    second = trained(root, settings(tiny_base, text_data, name="second", method="full",
                                    start_from="first", lr=1e-12, max_steps=1))
    assert not second.start_dir.exists()
    assert f"full on {first.output_dir}:" in capsys.readouterr().out
    before = load_file(first.output_dir / "model.safetensors")
    after = load_file(second.output_dir / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).state_dict()
    assert all(torch.allclose(after[name], before[name], atol=1e-8) for name in before)
    assert any(not torch.allclose(before[name], base[name]) for name in before)
    assert tuned_model(second) == second.output_dir


# -- a sequence from the CLI -----------------------------------------------------------------------

@pytest.fixture
def processes(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def second_task(tmp_path_factory) -> Path:
    """Another template over the same words: what the first task's model has not seen."""
    rng = random.Random(5)
    path = tmp_path_factory.mktemp("data") / "second.jsonl"
    lines = [f"a {rng.choice(('red', 'blue'))} {rng.choice(('log', 'tree'))} under "
             f"{rng.choice(('the', 'a'))} {rng.choice(('bird', 'dog'))} ran" for _ in range(48)]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "reference.txt"
    path.write_text(" . ".join(sentences(40, 7)) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_sequence_measures_each_stage_as_a_direct_probe_and_scan_would(
        cli, processes, tiny_base, text_data, second_task, reference, tmp_path, method):
    from spectui.checkpoint.comparison import open_comparison
    from spectui.probe import Probe

    root = tmp_path / "runs"
    ran = cli("train", "--sequence", f"{text_data},{second_task}", "--base", tiny_base,
              "--method", method, "--rank", "2", "--lr", "1e-2" if method == "lora" else "1e-3",
              "--max-steps", "3", "--batch-size", "4", "--device", "cpu", "--save-every", "0",
              "--eval-every", "0", "--reference", reference, "--runs-dir", root, "--name", "seq")
    assert ran.code == 0, ran.err
    results = read_results(root / "seq" / "results.json")
    assert [m.name for m in results.members] == ["seq-stage1", "seq-stage2"]
    stage2 = Run(root / "seq-stage2")
    assert stage2.spec().start_from == str(root / "seq-stage1")
    assert (method == "lora") == stage2.start_dir.is_dir()

    line = results.lines[0]
    matrix = forgetting_matrix(results, line)
    assert matrix.tasks == ["text", "second"] and matrix.stages == ["base", "1", "2"]
    assert len(matrix.loss) == 2 and all(len(row) == 3 for row in matrix.loss)
    assert matrix.loss[1][1] is None  # task 2 is not measured before it is trained
    heldout = [root / "seq" / "heldout" / f"task{task}.jsonl" for task in (1, 2)]
    for task, path in enumerate(heldout):
        probe = Probe(Path(tiny_base), reference, path)
        probe.task = [ids[:-1] for ids in probe.task]  # as the runs train: no end token added
        for stage, name in enumerate(["seq-stage1", "seq-stage2"], start=1):
            if stage < task + 1:
                continue
            model = tuned_model(Run(root / name))
            source = open_comparison(str(tiny_base), [str(model)]).tuned[0].source
            ref_score, task_score = probe.score(source)
            assert matrix.loss[task][stage] == pytest.approx(task_score.loss, rel=1e-9)
            assert results.member(name).reference_loss == pytest.approx(ref_score.loss, rel=1e-9)
        base_ref, base_task = probe.score()
        assert matrix.loss[task][0] == pytest.approx(base_task.loss, rel=1e-9)
    curve = intruders_vs_stage(results)[0]
    for stage, name in enumerate(["seq-stage1", "seq-stage2"], start=1):
        scanned = cli("scan", tiny_base, tuned_model(Run(root / name)), "--json", "--device", "cpu",
                      "--cache-dir", tmp_path / "scan-cache")
        assert curve.y[stage] == json.loads(scanned.out)["total_intruders"]
    assert "forgetting" in ran.out and "stage 2" in ran.out
