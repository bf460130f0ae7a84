"""What every results screen shares: re-read the inspector whenever results, thresholds or the
tuned model shown change, or when the screen comes back to the top."""

from __future__ import annotations

from textual.screen import Screen

from spectui.tui.messages import ResultsChanged, ThresholdsChanged


class ResultsScreen(Screen):
    def update_view(self) -> None:
        """Redraw from the inspector's stored results (cheap: no new decomposition)."""

    def on_screen_resume(self) -> None:
        self.update_view()

    def on_results_changed(self, _: ResultsChanged) -> None:
        self.update_view()

    def on_thresholds_changed(self, _: ThresholdsChanged) -> None:
        self.update_view()
