"""The spectui inspector app: paints at once, scans in the background, re-reads results on any key."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import App
from textual.await_complete import AwaitComplete
from textual.css.query import NoMatches
from textual.messages import ExitApp
from textual.reactive import reactive
from textual.worker import Worker, WorkerState, get_current_worker

from spectui import atomic
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K, TOP_VECTORS
from spectui.errors import InputError, log_internal_error, one_line
from spectui.finetune.runs import LIVE, Run, list_runs
from spectui.tui.commands import SpectuiCommands
from spectui.tui.inspector import Inspector
from spectui.tui.keys import app_bindings, read_escape_before_a_key
from spectui.tui.messages import MatrixHighlighted, OpenMatrix, ResultsChanged, ThresholdsChanged
from spectui.tui.screens import (
    CompareScreen,
    HelpScreen,
    MatrixScreen,
    MitigateScreen,
    OverviewScreen,
    RunsScreen,
    ThresholdsScreen,
    TrainScreen,
    open_studies,
)
from spectui.tui.widgets.matrix_list import MatrixList

REFRESH_SECONDS = 0.5  # results are batched: a scan of thousands of matrices never floods the UI


class SpectuiApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "spectui"
    COMMANDS = App.COMMANDS | {SpectuiCommands}
    BINDINGS = app_bindings()  # every global key; each screen shows its own choice in its footer

    k: reactive[int] = reactive(DEFAULT_K)
    epsilon: reactive[float] = reactive(DEFAULT_EPSILON)
    model: reactive[int] = reactive(0)

    def __init__(self, inspector: Inspector, k: int = DEFAULT_K, epsilon: float = DEFAULT_EPSILON,
                 export_dir: Path | None = None) -> None:
        super().__init__()
        read_escape_before_a_key()
        self.inspector = inspector
        self._quitting = False
        self.quit_note = ""  # said on the terminal after the app closes
        self.export_dir = export_dir or Path.cwd()
        self._dirty = False
        self._followed: dict[Path, Run] = {}  # runs whose checkpoints are scanned as they land
        self.set_reactive(SpectuiApp.k, k)
        self.set_reactive(SpectuiApp.epsilon, epsilon)
        ranks = [min(spec.shape) for m in inspector.comparison.tuned for spec in m.pairing.matrices]
        self.k_max = min(TOP_VECTORS, max(ranks, default=DEFAULT_K))

    def push_screen(self, screen, *args, **kwargs):
        """Keys typed after `q` but read before the app closes (a paste, a fast typist) must not
        open screens on an app that is tearing down."""
        if self.return_code is not None:  # exit() was called
            return AwaitComplete()
        return super().push_screen(screen, *args, **kwargs)

    def get_default_screen(self) -> OverviewScreen:
        return OverviewScreen(self.inspector)

    def on_mount(self) -> None:
        self.inspector.warn = lambda message: self.call_from_thread(
            self.notify, message, title="cache", severity="warning", timeout=15, markup=False)
        self._update_subtitle()
        for note in self.inspector.comparison.notes:
            self.notify(note, timeout=8, markup=False)
        for warning in self.inspector.comparison.warnings:
            self.notify(warning, severity="warning", timeout=15, markup=False)
        self.set_interval(REFRESH_SECONDS, self._publish_results)
        # torch's import holds the GIL for a second: start it only once the first frame is out
        self.call_after_refresh(self.scan_in_background)
        self.call_after_refresh(self.reattach_runs)

    @work(thread=True, group="scan", exclusive=True)
    def scan_in_background(self) -> None:
        """Imports torch and the engine off the UI thread, then lets the engine's workers run."""
        self.inspector.start(self._on_engine_event).wait()

    def add_tuned_model(self, path: Path) -> None:
        """Add a tuned model (e.g. a mitigated export) to the comparison and show it."""
        try:
            self.model = self.inspector.add_model(path)
        except InputError as err:
            self.tell(err)

    # -- errors -------------------------------------------------------------------------------
    def tell(self, error: InputError) -> None:
        """Bad input, in one line: the TUI's one way of saying it (the CLI's is exit code 2)."""
        self.notify(str(error), title="cannot do that", severity="error", timeout=10, markup=False)

    def _fatal_error(self) -> None:
        """Textual's end for an unhandled exception, with one line naming the log that holds the
        traceback instead of the traceback itself. (Textual has no public hook for this; tests still
        see the exception, which run_test re-raises.)"""
        error = self._exception
        if self._quitting and isinstance(error, NoMatches):  # a widget still mounting as the app closes
            self._exception = None
            self.exit()
            return
        log = log_internal_error(error) if error is not None else "nowhere"
        self.exit(return_code=1, message=f"spectui: internal error: {type(error).__name__}: {one_line(error)} "
                                         f"(details in {log})")
        self._close_messages_no_wait()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.worker_ended(event)

    def worker_ended(self, event: Worker.StateChanged) -> None:
        """Workers run with exit_on_error=False and end here: bad input is told, anything else is
        an internal error, logged, and the app goes on."""
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        if isinstance(error, InputError):
            self.tell(error)
        else:
            log = log_internal_error(error)
            self.notify(f"internal error: {type(error).__name__}: {one_line(error)} (details in {log})",
                        severity="error", timeout=30, markup=False)

    def _on_engine_event(self, event) -> None:
        """Called on engine threads: only flags and thread-safe calls here."""
        from spectui.engine import MatrixFailed, ScanNotice

        self._dirty = True
        if isinstance(event, MatrixFailed):
            self.call_from_thread(self.notify, event.message, title="scan error", severity="error", timeout=10,
                                  markup=False)
        elif isinstance(event, ScanNotice):
            self.call_from_thread(self.notify, event.message, title="scan", timeout=10, markup=False)

    def _publish_results(self) -> None:
        if self._dirty:
            self._dirty = False
            self.screen.post_message(ResultsChanged())

    def on_unmount(self) -> None:
        self.inspector.stop()

    # -- thresholds and model -----------------------------------------------------------------
    def _thresholds_changed(self) -> None:
        self._update_subtitle()
        self.screen.post_message(ThresholdsChanged())

    watch_k = watch_epsilon = watch_model = _thresholds_changed

    def _update_subtitle(self) -> None:
        ins = self.inspector
        tuned = ins.comparison.tuned[self.model]
        others = f" ({self.model + 1}/{len(ins.labels)}, m switches)" if len(ins.labels) > 1 else ""
        self.sub_title = (f"{ins.comparison.base.label} → {tuned.label}{others} · "
                          f"{tuned.description} · k={self.k} ε={self.epsilon:.2f}")

    def action_epsilon(self, step: float) -> None:
        self.epsilon = round(min(1.0, max(0.05, self.epsilon + step)), 2)

    def action_k(self, step: int) -> None:
        self.k = min(self.k_max, max(1, self.k + step))

    def action_next_model(self) -> None:
        self.model = (self.model + 1) % len(self.inspector.labels)

    def action_thresholds(self) -> None:
        def apply(values: tuple[int, float] | None) -> None:
            if values is not None:
                self.k, self.epsilon = values

        self.push_screen(ThresholdsScreen(self.k, self.epsilon, self.k_max), apply)

    def action_pause_scan(self) -> None:
        if self.inspector.finished:
            self.notify("the scan is complete", timeout=3)
            return
        paused = not self.inspector.paused
        self.inspector.pause(paused)
        self.notify("scan paused after the matrices in hand; P goes on" if paused else "scan goes on", timeout=4)

    def action_help(self) -> None:
        from spectui.tui.screens.dialogs import help_groups

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(help_groups(self.screen)))

    def on_exit_app(self, _: ExitApp) -> None:
        """Closed by its driver (a --serve tab closed) rather than by exit()."""
        self._quitting = True

    def exit(self, *args, **kwargs) -> None:
        """The thread following runs is stopped, and none starts once the app is closing: while a
        run trains, it would keep the app's shutdown waiting."""
        self._quitting = True
        self.workers.cancel_group(self, "run-scan")
        super().exit(*args, **kwargs)

    async def action_quit(self) -> None:
        """Quit; runs being followed that still train are said to go on (they are detached)."""
        live = [run.name for run in self._followed.values() if run.status().state in LIVE]
        if live:
            names = ", ".join(live)
            self.quit_note = (f"spectui: {names} {'is' if len(live) == 1 else 'are'} still training in the "
                              "background; `spectui runs` lists runs, and spectui re-attaches when it opens")
            self.exit(message=self.quit_note)
        else:
            self.exit()

    # -- fine-tuning runs ---------------------------------------------------------------------
    def action_train(self) -> None:
        if not isinstance(self.screen, TrainScreen):
            self.push_screen(TrainScreen(self.inspector.base_dir))

    def action_runs(self) -> None:
        if not isinstance(self.screen, RunsScreen):
            self.push_screen(RunsScreen())

    def action_studies(self) -> None:
        open_studies(self)

    @work(thread=True, group="runs", exclusive=True, exit_on_error=False)
    def reattach_runs(self) -> None:
        """Runs launched before this session (the TUI closed, or SSH dropped) that still train."""
        live = [run for run in list_runs() if run.status().state in LIVE]
        if live:
            names = ", ".join(run.name for run in live)
            self.call_from_thread(self.notify, f"re-attached to {names}; R lists the runs",
                                  title=f"{len(live)} run(s) still training", timeout=10)
            self.call_from_thread(self.follow_runs, live)

    def follow_runs(self, runs: list[Run]) -> None:
        """Scan these runs' checkpoints as they land, with those already followed."""
        if self._quitting:  # re-attaching found them while the app was being closed
            return
        self._followed.update((run.path, run) for run in runs)
        self.scan_runs(list(self._followed.values()))

    @work(thread=True, group="run-scan", exclusive=True, exit_on_error=False)
    def scan_runs(self, runs: list[Run]) -> None:
        """Writes each run's intruders.jsonl (the live views plot it) until the runs end; the
        base's decompositions come from the inspector's cache."""
        from spectui.run_intruders import follow_runs

        follow_runs(runs, self.inspector.cache(), get_current_worker().cancelled_event,
                    on_error=lambda run, message: self.call_from_thread(self._unfollow, run, message),
                    device=self.inspector.device, workers=self.inspector.workers)

    def show_run_output(self, run: Run) -> None:
        """A finished run's output becomes the model shown; back to the overview."""
        if self._put_run_output(run):
            while len(self.screen_stack) > 1:
                self.pop_screen()

    def add_run_output(self, run: Run) -> None:
        if self._put_run_output(run):
            self.notify(f"{run.name} is in the comparison; m switches models on the overview")

    def _put_run_output(self, run: Run) -> bool:
        try:
            self.model = self.inspector.run_output(run)
        except InputError as err:
            self.tell(err)
            return False
        return True

    def _unfollow(self, run: Run, message: str) -> None:
        self._followed.pop(run.path, None)
        self.notify(message, title=f"{run.name}: checkpoints not scanned", severity="error", timeout=10,
                    markup=False)

    # -- navigation ---------------------------------------------------------------------------
    def action_compare(self) -> None:
        if not isinstance(self.screen, CompareScreen):
            self.push_screen(CompareScreen(self.inspector))

    def action_mitigate(self) -> None:
        """The Mitigate view, previewing the matrix being looked at."""
        screen = self.screen
        if isinstance(screen, MitigateScreen):
            return
        if isinstance(screen, MatrixScreen):
            matrix = screen.matrix
        else:
            lists = screen.query(MatrixList)
            matrix = lists.first().highlighted if lists else None
        self.push_screen(MitigateScreen(self.inspector, matrix))

    def open_matrix(self, name: str) -> None:
        if isinstance(self.screen, MatrixScreen):
            self.pop_screen()
        self.push_screen(MatrixScreen(self.inspector, name))

    def on_open_matrix(self, message: OpenMatrix) -> None:
        self.open_matrix(message.name)

    def on_matrix_highlighted(self, message: MatrixHighlighted) -> None:
        self.inspector.prioritize(message.name, spectra=False)

    # -- export -------------------------------------------------------------------------------
    def action_export(self) -> None:
        """JSON, CSV and a screenshot now; the HTML and Markdown reports follow from a worker."""
        import json

        from spectui.report.records import scan_csv, scan_json

        ins = self.inspector
        stem = self.export_dir / f"spectui-{ins.comparison.base.label}-{time.strftime('%Y%m%d-%H%M%S')}"
        scan, k, eps = ins.scan_results, self.k, self.epsilon
        try:
            ins.comparison.check_output(stem.with_suffix(".json"), "folder with --export-dir")
        except InputError as err:  # the default folder (where spectui was started) is inside a model
            self.tell(err)
            return
        try:
            written = [
                atomic.write_text(stem.with_suffix(".json"), json.dumps(scan_json(scan, k, eps)) + "\n"),
                atomic.write_text(stem.with_suffix(".csv"), scan_csv(scan, k, eps)),
                atomic.write_text(stem.with_suffix(".svg"), self.export_screenshot()),
            ]
        except OSError as err:
            self.notify(f"{stem.parent}: cannot write the export ({err.strerror})", severity="error")
            return
        note = "" if ins.finished else " (scan still running: partial results)"
        self.notify(f"wrote {', '.join(p.name for p in written)} in {stem.parent}{note}; "
                    "HTML report on its way", title="exported")
        self.write_reports(stem, scan, k, eps)

    @work(thread=True, group="export", exclusive=True)
    def write_reports(self, stem: Path, scan, k: int, epsilon: float) -> None:
        from spectui.report import write_report

        try:
            paths = [write_report(scan, k, epsilon, stem.with_suffix(suffix)) for suffix in (".html", ".md")]
        except OSError as err:
            self.call_from_thread(self.notify, f"{stem.parent}: cannot write the report ({err.strerror})",
                                  severity="error")
            return
        self.call_from_thread(self.notify, f"wrote {', '.join(p.name for p in paths)} in {stem.parent}",
                              title="report")
