"""What screens and widgets may ask of the app that hosts them: the view state every screen reads
(tuned model shown, k, ε), the inspector, and the few actions that cross screens. The app
implements it; screens see the app through it, so they never import the app module."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from textual.app import App

if TYPE_CHECKING:
    from textual.worker import Worker

    from spectui.errors import InputError
    from spectui.finetune.runs import Run
    from spectui.tui.inspector import Inspector


class Host(Protocol):
    inspector: Inspector
    export_dir: Path
    model: int  # index of the tuned model shown
    k: int
    epsilon: float
    k_max: int

    def add_tuned_model(self, path: Path) -> None: ...

    def tell(self, error: InputError) -> None:
        """Say what is wrong with the user's input."""

    def worker_ended(self, event: Worker.StateChanged) -> None:
        """Where every worker's failure is reported."""

    def follow_runs(self, runs: list[Run]) -> None:
        """Scan these runs' checkpoints as they land."""

    def show_run_output(self, run: Run) -> None: ...

    def add_run_output(self, run: Run) -> None: ...


if TYPE_CHECKING:

    class HostApp(App, Host):
        """The type of `self.app` in a screen: a Textual app that is a Host."""

else:
    HostApp = App
