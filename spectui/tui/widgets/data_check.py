"""A data file checked as a launch would read it, while the form is being filled in: a missing file or
a wrong type at once, its content (fields, labels, enough examples to hold some out) from a thread
worker, read again only when what the check depends on changed. The run form checks its one data
file, the study form each file of its study or sequence."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual.widget import Widget

from spectui.finetune.spec import RunSpec


class DataCheck:
    """The first problem of some data files, for `owner` (the form) to show; `on_read` is called
    on the UI thread when a worker has read the files and found something new."""

    def __init__(self, owner: Widget, on_read: Callable[[], None]) -> None:
        self.owner = owner
        self.on_read = on_read
        self._checked: tuple | None = None  # what the worker last read
        self._problem = ""  # what it found

    def problem(self, specs: list[RunSpec]) -> str:
        """The first problem of the specs' data files as far as known now; starts a read of their
        content when they changed."""
        for spec in specs:
            if quick := _file_problem(Path(spec.data).expanduser()):
                return quick
        key = tuple(_data_key(spec) for spec in specs)
        if key != self._checked:
            self._checked, self._problem = key, ""
            self.owner.run_worker(partial(self._read, specs, key), thread=True, group="data-check",
                                  exclusive=True, exit_on_error=False)
        return self._problem

    def _read(self, specs: list[RunSpec], key: tuple) -> None:
        from spectui.finetune.data import DataError, load_splits

        problem = ""
        for spec in specs:
            try:
                load_splits(spec)
            except DataError as error:
                problem = str(error)
            except OSError as error:
                problem = f"{spec.data}: cannot be read ({error.strerror or error})"
            if problem:
                break
        self.owner.app.call_from_thread(self._read_done, key, problem)

    def _read_done(self, key: tuple, problem: str) -> None:
        if key == self._checked and problem != self._problem:
            self._problem = problem
            self.on_read()


def _file_problem(path: Path) -> str:
    from spectui.finetune.data import SUFFIXES

    if not path.is_file():
        return f"{path}: file not found" if not path.exists() else f"{path}: not a file"
    if path.suffix.lower() not in SUFFIXES:
        return f"{path}: unsupported file type; use {', '.join(SUFFIXES)}"
    return ""


def _data_key(spec: RunSpec) -> tuple:
    """What the data check depends on, with the file's identity (edited → read again)."""
    def identity(name: str | None):
        if not name:
            return None
        try:
            stat = Path(name).expanduser().stat()
        except OSError:
            return None
        return name, stat.st_mtime_ns, stat.st_size

    return (identity(spec.data), spec.task, identity(spec.eval_file), spec.eval_fraction, spec.seed)
