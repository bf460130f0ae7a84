"""Training examples from a local .jsonl, .csv or .txt file, with errors a user can act on.

Every problem is a DataError whose message is one line naming the file and what is wrong with it
(and where), so the CLI and the form can show it as is.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectui.errors import FileInputError
from spectui.finetune.spec import RunSpec

SUFFIXES = (".jsonl", ".csv", ".txt")


class DataError(FileInputError):
    """A data file that cannot be used."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None = None  # set for classification only


def load_examples(path: str | Path, task: str) -> list[Example]:
    """Every example in the file, checked for the fields the task needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(path, f"unsupported file type; use {', '.join(SUFFIXES)}")
    if path.suffix.lower() == ".txt" and task == "classification":
        raise DataError(path, "a .txt file has no labels; use .jsonl or .csv with `text` and "
                              "`label` for classification")
    try:
        examples = [_example(path, line, record, task) for line, record in _records(path)]
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if not examples:
        raise DataError(path, "the file has no examples")
    return examples


def load_splits(spec: RunSpec) -> tuple[list[Example], list[Example]]:
    """Training and evaluation examples: the eval file if given, else a seeded held-out share."""
    examples = load_examples(spec.data, spec.task)
    if spec.eval_file:
        return examples, load_examples(spec.eval_file, spec.task)
    if spec.eval_fraction == 0:
        return examples, []
    held_out = max(1, round(len(examples) * spec.eval_fraction))
    if held_out >= len(examples):
        raise DataError(Path(spec.data), f"{len(examples)} example(s) are too few to hold out "
                                         "an evaluation share; add data or set eval_fraction 0")
    order = list(range(len(examples)))
    random.Random(spec.seed).shuffle(order)
    return [examples[i] for i in order[held_out:]], [examples[i] for i in order[:held_out]]


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank entry of the file."""
    with path.open(encoding="utf-8", newline="") as stream:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(stream)
            try:
                yield from ((reader.line_num, row) for row in reader)
            except csv.Error as error:  # a field past the csv module's limit, a NUL byte
                raise DataError(path, f"unreadable CSV at line {reader.line_num} ({error})") from None
            return
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield number, _record(path, number, line)


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """One line of a .txt (the line is the text) or .jsonl file (a JSON object)."""
    if path.suffix.lower() == ".txt":
        return {"text": line.rstrip("\r\n")}
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # malformed, a number of thousands of digits, nested too deep
        raise DataError(path, f"malformed JSON at line {number}") from None
    if not isinstance(record, dict):
        raise DataError(path, f"line {number} is not a JSON object")
    return record


def _example(path: Path, line: int, record: dict[str, Any], task: str) -> Example:
    text = record.get("text")
    if text is None:
        raise DataError(path, f"missing field `text` at line {line}")
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, f"field `text` is not a non-empty string at line {line}")
    if task != "classification":
        return Example(text)
    if record.get("label") is None:
        raise DataError(path, f"missing field `label` at line {line}")
    return Example(text, _label(path, line, record["label"]))


MAX_LABEL = 9_999  # class indexes size the classifier's head: a typo must not allocate gigabytes


def _label(path: Path, line: int, value: Any) -> int:
    """A class index: a JSON integer, or a CSV cell of digits, from 0 to MAX_LABEL."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value) if len(value.strip()) <= 6 else MAX_LABEL + 1
    if type(value) is int and 0 <= value <= MAX_LABEL:
        return value
    if type(value) is int and value > MAX_LABEL:
        raise DataError(path, f"label at line {line} is above {MAX_LABEL}, too many classes for a classifier head")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
    raise DataError(path, f"label {shown} is not a non-negative integer at line {line}")
