"""Run specs: validation messages, TOML/JSON loading, and the command preview."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from spectui.cli.train import spec_from_args
from spectui.finetune.spec import RunSpec, SpecError, load_spec, parse_field, render_command


@pytest.fixture
def valid(tiny_base, text_data) -> RunSpec:
    return RunSpec(base=str(tiny_base), data=str(text_data))


def test_a_complete_spec_has_no_errors(valid):
    assert valid.errors() == {}
    valid.check()


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"base": ""}, "base", "a base model is required"),
    ({"base": "./nowhere"}, "base", "base model directory ./nowhere does not exist"),
    ({"data": ""}, "data", "a data file is required"),
    ({"method": "qlora"}, "method",
     "method must be one of full, lora, rslora, lora-frozen-a, dora, pissa"),
    ({"rank": 0}, "rank", "rank must be at least 1"),
    ({"alpha": -1.0}, "alpha", "alpha must be greater than 0"),
    ({"dropout": 1.5}, "dropout", "dropout must be between 0 and 0.9"),
    ({"target_modules": "q proj"}, "target_modules",
     "target_modules must be attention, all-linear or comma-separated module names"),
    ({"lr": float("nan")}, "lr", "lr must be greater than 0"),
    ({"max_steps": 0}, "max_steps", "max_steps must be at least 1"),
    ({"eval_fraction": 0.9}, "eval_fraction", "eval_fraction must be between 0 and 0.5"),
    ({"device": "gpu"}, "device", "device must be auto, cpu, cuda, cuda:N or mps"),
    ({"name": "a/b"}, "name",
     "name must be a plain directory name (letters, digits, '.', '-', '_')"),
])
def test_each_invalid_field_gets_its_own_sentence(valid, changes, field, message):
    spec = RunSpec(**{**valid.to_dict(), **changes})
    assert spec.errors() == {field: message}
    with pytest.raises(SpecError, match=re.escape(message)):
        spec.check()


def test_base_directory_without_config_is_refused(valid, tmp_path):
    spec = RunSpec(**{**valid.to_dict(), "base": str(tmp_path)})
    assert spec.errors() == {"base": f"base model directory {tmp_path} has no config.json"}


def test_existing_output_directory_is_refused(valid, tmp_path):
    spec = RunSpec(**{**valid.to_dict(), "out": str(tmp_path)})
    assert spec.errors() == {"out": f"output directory {tmp_path} already exists"}


def test_derived_values():
    assert RunSpec(method="lora").learning_rate == 2e-4
    assert RunSpec(method="full").learning_rate == 2e-5
    assert RunSpec(lr=0.1).learning_rate == 0.1
    assert RunSpec(rank=16, alpha=4.0).lora_alpha == 4.0
    assert RunSpec(rank=16, alpha=4.0, alpha_2r=True).lora_alpha == 32.0


def test_only_pissa_warns():
    assert RunSpec(method="lora").warnings() == []
    assert "original base" in RunSpec(method="pissa").warnings()[0]


def test_toml_and_json_load_the_same_spec(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('base = "b"\ndata = "d.jsonl"\nmethod = "dora"\nrank = 4\nalpha = 8\n'
                    'target_modules = ["q_proj", "v_proj"]\n')
    spec = load_spec(toml)
    assert spec == RunSpec(base="b", data="d.jsonl", method="dora", rank=4, alpha=8.0,
                           target_modules="q_proj,v_proj")
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps(spec.to_dict()))
    assert load_spec(as_json) == spec


@pytest.mark.parametrize(("name", "text", "message"), [
    ("missing.toml", None, "missing.toml: file not found"),
    ("run.yaml", "base: x", "run.yaml: a spec file must end in .toml or .json"),
    ("run.toml", "rank = ", "run.toml: invalid TOML"),
    ("run.json", '{"rank": 4,}', "run.json: invalid JSON at line 1"),
    ("run.json", "[1]", "run.json: a spec must be a table of fields"),
    ("run.toml", "rnak = 4", "run.toml: unknown field `rnak`"),
    ("run.toml", 'rank = "eight"', "run.toml: rank must be an integer"),
    ("run.toml", "lr = true", "run.toml: lr must be a number"),
])
def test_unusable_spec_files_name_the_file_and_problem(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert str(raised.value).startswith(str(tmp_path / message))


def test_parse_field_reads_form_text():
    assert parse_field("rank", " 8 ") == 8
    assert parse_field("lr", "3e-4") == 3e-4
    assert parse_field("lr", "") is None
    assert parse_field("alpha_2r", "yes") is True
    with pytest.raises(SpecError, match="rank must be an integer"):
        parse_field("rank", "8.5")


def test_command_preview_reproduces_the_spec(spectui, valid):
    spec = RunSpec(**{**valid.to_dict(), "method": "rslora", "rank": 4, "alpha_2r": True,
                      "lr": 1e-3, "max_steps": 30, "target_modules": "all-linear"})
    command = render_command(spec)
    words = shlex.split(command)
    assert words[:2] == ["spectui", "train"]
    assert "--alpha-2r" in words and "--batch-size" not in words  # defaults are left out
    assert spec_from_args(spectui.parse_args(words[1:])) == spec


def test_flags_override_the_spec_file(spectui, valid, tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**valid.to_dict(), "rank": 4, "seed": 3}))
    spec = spec_from_args(spectui.parse_args(["train", str(path), "--rank", "16"]))
    assert (spec.rank, spec.seed) == (16, 3)
