"""Headless training, in-process on a tiny LLaMA: each method's output loads and means what it
should, metrics are complete, resume is exact, and failures are recorded with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from spectui.finetune import runner
from spectui.finetune.models import build_model, load_tokenizer
from spectui.finetune.runs import Run, State, create_run
from spectui.finetune.spec import METHODS, RunSpec

METRIC_FIELDS = {"step", "max_steps", "epoch", "loss", "eval_loss", "lr", "grad_norm",
                 "tokens_per_s", "elapsed_s"}
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices are far faster on one thread, above all on a shared two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(base: Path, data: Path, root: Path, **changes) -> Run:
    settings = {"base": str(base), "data": str(data), "device": "cpu", "rank": 2, "lr": 1e-2,
                "max_steps": 6, "batch_size": 4, "log_every": 2, "eval_every": 3, "save_every": 3}
    return create_run(RunSpec(**{**settings, **changes}), root)


def train(base: Path, data: Path, root: Path, **changes) -> Run:
    run = make_run(base, data, root, **changes)
    assert runner.execute(run) is State.DONE, run.status().message
    return run


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def output_tensors(run: Run) -> dict[str, torch.Tensor]:
    weights = "model.safetensors" if run.spec().method == "full" else "adapter_model.safetensors"
    return load_file(run.output_dir / weights)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_output_that_loads(tiny_base, text_data, tmp_path, method):
    run = train(tiny_base, text_data, tmp_path, method=method)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    before = {name: weight.clone() for name, weight in base.state_dict().items()}
    if method == "full":
        tuned = AutoModelForCausalLM.from_pretrained(run.output_dir)
        assert AutoTokenizer.from_pretrained(run.output_dir).pad_token == "<pad>"
    else:
        tuned = PeftModel.from_pretrained(base, run.output_dir).merge_and_unload()
        config = json.loads((run.output_dir / "adapter_config.json").read_text())
        assert config["use_rslora"] is (method == "rslora")
        assert config["use_dora"] is (method == "dora")
        assert config["r"] == (4 if method == "pissa" else 2)  # PiSSA converts to rank 2r
        assert config["init_lora_weights"] is True
        assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == ATTENTION
    changed = [name for name, weight in tuned.state_dict().items()
               if not torch.allclose(weight, before[name])]
    assert changed
    if method != "full":
        assert all(name.split(".")[-2] in ATTENTION for name in changed)


def test_metrics_and_checkpoints(tiny_base, text_data, tmp_path):
    run = train(tiny_base, text_data, tmp_path)
    rows = run.metrics()
    assert [row["step"] for row in rows] == [2, 3, 4, 6]
    assert all(set(row) == METRIC_FIELDS for row in rows)
    assert [row["eval_loss"] is not None for row in rows] == [False, True, False, True]
    assert all(row["max_steps"] == 6 and row["tokens_per_s"] > 0 for row in rows)
    assert rows[-1]["elapsed_s"] > rows[0]["elapsed_s"]
    assert [step for step, _ in run.checkpoints()] == [3, 6]
    assert sorted(p.name for p in run.checkpoint_dir(3).iterdir()) == ["model"]
    assert sorted(p.name for p in run.checkpoint_dir(6).iterdir()) == [
        "model", "state.pt", "trainable.safetensors"]
    assert adapter_tensors(run.checkpoint_dir(6) / "model").keys() == adapter_tensors(
        run.output_dir).keys()
    assert not list(run.path.glob("**/.*.tmp"))


def test_output_goes_where_the_spec_says(tiny_base, text_data, tmp_path):
    run = train(tiny_base, text_data, tmp_path / "runs", out=str(tmp_path / "models" / "mine"))
    assert run.output_dir == tmp_path / "models" / "mine"
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    assert not (run.path / "output").exists()


def test_without_evaluation_data_eval_fields_stay_empty(tiny_base, text_data, tmp_path):
    run = train(tiny_base, text_data, tmp_path, eval_fraction=0.0)
    assert [(row["step"], row["eval_loss"]) for row in run.metrics()] == [
        (2, None), (4, None), (6, None)]


@pytest.mark.parametrize("method", ["lora", "lora-frozen-a"])
def test_frozen_a_keeps_its_initial_value(tiny_base, text_data, tmp_path, method):
    run = train(tiny_base, text_data, tmp_path, method=method)
    spec = run.spec()
    initial = get_peft_model_state_dict(build_model(spec, load_tokenizer(spec), 2))
    trained = adapter_tensors(run.output_dir)
    a_same = [torch.equal(trained[k], initial[k]) for k in trained if ".lora_A." in k]
    b_same = [torch.equal(trained[k], initial[k]) for k in trained if ".lora_B." in k]
    assert a_same and b_same and not any(b_same)
    assert all(a_same) if method == "lora-frozen-a" else not any(a_same)


def test_pissa_output_is_relative_to_the_original_base(tiny_base, text_data, tmp_path):
    run = train(tiny_base, text_data, tmp_path, method="pissa")
    spec = run.spec()
    converted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base), run.output_dir).merge_and_unload()
    # The model as trained: PiSSA's residual base plus the trained factors (kept for resume).
    trained = build_model(spec, load_tokenizer(spec), 2, run.checkpoint_dir(6)).merge_and_unload()
    original = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    for name, weight in trained.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[name], weight, atol=1e-5, rtol=1e-5)
    assert any(not torch.allclose(original[name], weight)
               for name, weight in trained.state_dict().items())


@pytest.mark.parametrize(("method", "lr", "ratio"), [("full", 1e-2, 0.6), ("lora", 3e-2, 0.98)])
def test_loss_decreases_on_repetitive_data(tiny_base, text_data, tmp_path, method, lr, ratio):
    run = train(tiny_base, text_data, tmp_path, method=method, lr=lr, rank=8, batch_size=8,
                max_steps=20, log_every=5, eval_every=0, save_every=0)
    losses = [row["loss"] for row in run.metrics()]
    assert len(losses) == 4 and losses[-1] < ratio * losses[0]
    assert losses == sorted(losses, reverse=True)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_classification_reports_accuracy(tiny_base, label_data, tmp_path, method):
    run = train(tiny_base, label_data, tmp_path, method=method, task="classification")
    evaluated = [row for row in run.metrics() if row["eval_loss"] is not None]
    assert len(evaluated) == 2
    assert all(0.0 <= row["eval_accuracy"] <= 1.0 for row in evaluated)
    if method == "full":
        model = AutoModelForSequenceClassification.from_pretrained(run.output_dir)
    else:
        base = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=2)
        model = PeftModel.from_pretrained(base, run.output_dir)
    assert model.config.num_labels == 2


@pytest.mark.parametrize("method", ["lora", "pissa", "full"])
def test_resume_after_a_stop_matches_an_uninterrupted_run(tiny_base, text_data, tmp_path,
                                                         monkeypatch, method):
    settings = {"max_steps": 8, "save_every": 4, "dropout": 0.1, "method": method}
    straight = train(tiny_base, text_data, tmp_path, name="straight", **settings)
    log = runner.Loop._log

    def stop_after_step_6(loop, *args):  # past the step-4 checkpoint, so step 6 is redone
        log(loop, *args)
        if loop.step == 6:
            raise runner.Cancelled("SIGTERM")

    stopped = make_run(tiny_base, text_data, tmp_path, name="stopped", **settings)
    monkeypatch.setattr(runner.Loop, "_log", stop_after_step_6)
    assert runner.execute(stopped) is State.CANCELLED
    assert stopped.status().message == "stopped by SIGTERM"
    assert not stopped.output_dir.exists()
    monkeypatch.undo()
    assert runner.execute(stopped) is State.DONE
    assert [row["step"] for row in stopped.metrics()] == [2, 3, 4, 6, 8]
    assert [row["loss"] for row in stopped.metrics()] == [
        row["loss"] for row in straight.metrics()]
    expected = output_tensors(straight)
    for name, tensor in output_tensors(stopped).items():
        assert torch.equal(tensor, expected[name]), name


def test_nan_loss_fails_the_run_without_output(tiny_base, text_data, tmp_path):
    broken = tmp_path / "nan-base"
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(broken)
    run = make_run(broken, text_data, tmp_path, method="full")
    assert runner.execute(run) is State.FAILED
    assert run.status().message == (
        "the loss became nan at step 1; lower the learning rate (0.01) or train in float32")
    assert not run.output_dir.exists()


def test_unloadable_base_fails_the_run_with_its_reason(text_data, tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    run = make_run(broken, text_data, tmp_path)
    assert runner.execute(run) is State.FAILED
    assert run.status().message.startswith(f"cannot load the tokenizer of {broken}: ")
    assert not run.output_dir.exists()
