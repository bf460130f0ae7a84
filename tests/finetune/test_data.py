"""Data files: what is read, how evaluation is held out, and the message for each bad file."""

from __future__ import annotations

import json

import pytest

from spectui.finetune.data import DataError, Example, load_examples, load_splits
from spectui.finetune.runs import list_runs
from spectui.finetune.spec import RunSpec

BAD_FILES = [
    # (file name, content or None for a missing file, task, problem)
    ("missing.jsonl", None, "causal-lm", "file not found"),
    ("empty.jsonl", "", "causal-lm", "the file has no examples"),
    ("blank.jsonl", "\n  \n", "causal-lm", "the file has no examples"),
    ("header-only.csv", "text,label\n", "causal-lm", "the file has no examples"),
    ("broken.jsonl", '{"text": "a"}\n{"text": "b"\n', "causal-lm", "malformed JSON at line 2"),
    ("list.jsonl", '["a"]\n', "causal-lm", "line 1 is not a JSON object"),
    ("prompt.jsonl", '{"text": "a"}\n\n{"prompt": "b"}\n', "causal-lm",
     "missing field `text` at line 3"),
    ("number.jsonl", '{"text": 3}\n', "causal-lm",
     "field `text` is not a non-empty string at line 1"),
    ("unlabelled.jsonl", '{"text": "a"}\n', "classification", "missing field `label` at line 1"),
    ("word.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": "positive"}\n',
     "classification", "label 'positive' is not a non-negative integer at line 2"),
    ("float.jsonl", '{"text": "a", "label": 1.5}\n', "classification",
     "label 1.5 is not a non-negative integer at line 1"),
    ("negative.csv", "text,label\na,1\nb,-1\n", "classification",
     "label '-1' is not a non-negative integer at line 3"),
    ("header.csv", "sentence,label\na,1\n", "classification", "missing field `text` at line 2"),
    ("lines.txt", "a\nb\n", "classification",
     "a .txt file has no labels; use .jsonl or .csv with `text` and `label` for classification"),
    ("data.parquet", "x", "causal-lm", "unsupported file type; use .jsonl, .csv, .txt"),
    ("latin1.txt", b"caf\xe9\n", "causal-lm", "not UTF-8 text"),
]


def write(path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


@pytest.mark.parametrize(("name", "content", "task", "problem"), BAD_FILES)
def test_bad_file_gives_one_line_naming_file_and_problem(tmp_path, name, content, task, problem):
    write(tmp_path / name, content)
    with pytest.raises(DataError) as raised:
        load_examples(tmp_path / name, task)
    assert str(raised.value) == f"{tmp_path / name}: {problem}"


@pytest.mark.parametrize(("name", "content", "task", "problem"), BAD_FILES[:11])
def test_train_reports_bad_data_with_exit_2_before_launching(
        cli, tiny_base, tmp_path, name, content, task, problem):
    write(tmp_path / name, content)
    code, _, err = cli("train", "--base", tiny_base, "--data", tmp_path / name, "--task", task,
                       "--runs-dir", tmp_path / "runs")
    assert code == 2
    assert err == f"spectui: error: {tmp_path / name}: {problem}\n"
    assert list_runs(tmp_path / "runs") == []


def test_bad_flag_value_is_one_line_with_exit_2(cli, tiny_base, text_data, tmp_path):
    code, _, err = cli("train", "--base", tiny_base, "--data", text_data, "--rank", "0",
                       "--dropout", "2", "--runs-dir", tmp_path)
    assert code == 2
    assert err == (
        "spectui: error: rank must be at least 1; dropout must be between 0 and 0.9\n")


def test_bad_spec_file_is_named(cli, tmp_path):
    spec = tmp_path / "run.toml"
    spec.write_text('base = "./absent"\ndata = "d.jsonl"\n')
    ran = cli("train", spec, "--runs-dir", tmp_path)
    assert ran.code == 2
    assert ran.err == (
        f"spectui: error: {spec}: base model directory ./absent does not exist\n")


def test_readable_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "b.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "x", "label": "2", "id": 7}) + "\n")
    assert load_examples(tmp_path / "a.txt", "causal-lm") == [
        Example("first line"), Example("second line")]
    assert load_examples(tmp_path / "b.csv", "classification") == [
        Example("hello, world", 1), Example("bye", 0)]
    assert load_examples(tmp_path / "c.jsonl", "classification") == [Example("x", 2)]
    assert load_examples(tmp_path / "c.jsonl", "causal-lm") == [Example("x")]


def test_held_out_split_is_seeded_and_disjoint(text_data):
    spec = RunSpec(data=str(text_data), eval_fraction=0.25, seed=1)
    train, held_out = load_splits(spec)
    assert (len(train), len(held_out)) == (48, 16)
    assert load_splits(spec) == (train, held_out)
    assert load_splits(RunSpec(data=str(text_data), eval_fraction=0.25, seed=2)) != (
        train, held_out)
    assert sorted(e.text for e in train + held_out) == sorted(
        e.text for e in load_examples(text_data, "causal-lm"))
    assert load_splits(RunSpec(data=str(text_data), eval_fraction=0.0))[1] == []


def test_eval_file_replaces_the_held_out_share(text_data, label_data):
    train, held_out = load_splits(RunSpec(data=str(text_data), eval_file=str(label_data)))
    assert len(train) == 64 and len(held_out) == 64


def test_too_few_examples_to_hold_out(tmp_path):
    (tmp_path / "one.txt").write_text("only line\n")
    with pytest.raises(DataError, match=r"1 example\(s\) are too few to hold out"):
        load_splits(RunSpec(data=str(tmp_path / "one.txt")))
