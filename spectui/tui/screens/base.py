"""What every screen shares: the app, typed as the Host it is; and, for results screens, re-reading the
inspector whenever results, thresholds or the tuned model shown change, or the screen returns."""

from __future__ import annotations

from typing import cast

from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker

from spectui.tui.host import HostApp
from spectui.tui.messages import ResultsChanged, ThresholdsChanged


class SpectuiScreen(Screen):
    # Textual's Tab, taken before the keys read with it are handed out (see widgets/field.py): "Tab e"
    # read together must not type the e into the field Tab leaves.
    BINDINGS = [
        Binding("tab", "app.focus_next", "Next pane", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", "Previous pane", show=False, priority=True),
    ]

    @property
    def app(self) -> HostApp:
        return cast(HostApp, super().app)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A screen's workers end where the app's do (Worker messages do not bubble)."""
        self.app.worker_ended(event)

    def on_screen_resume(self) -> None:
        """Back on this screen (a screen above closed): the keys go where they went before, or to
        the first pane if that widget is gone, never nowhere."""
        if self.focused is None:
            self.focus_next()


class ResultsScreen(SpectuiScreen):
    def update_view(self) -> None:
        """Redraw from the inspector's stored results (cheap: no new decomposition)."""

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.update_view()

    def on_results_changed(self, _: ResultsChanged) -> None:
        self.update_view()

    def on_thresholds_changed(self, _: ThresholdsChanged) -> None:
        self.update_view()
