"""Command palette entries: every app action, and every matrix by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from spectui.checkpoint.names import short_name


class SpectuiCommands(Provider):
    def _commands(self):
        app = self.app
        yield "Export scan (JSON, CSV, SVG screenshot)", app.action_export, "write files and say where"
        yield "Set k and ε", app.action_thresholds, "type the thresholds"
        yield "Compare tuned models", app.action_compare, "totals, ΔW, ε and k curves side by side"
        yield "Mitigate: scale intruders by λ", app.action_mitigate, "preview, λ sweep, export"
        yield "Help: keys", app.action_help, "list every key"
        yield "Train: fine-tune the base (new run)", app.action_train, "LoRA variants or full, detached"
        yield "Runs: list fine-tuning runs", app.action_runs, "status, progress, open results"
        if len(app.inspector.labels) > 1:
            yield "Next tuned model", app.action_next_model, "show the next tuned model"
        for name in app.inspector.comparison.matrix_names():
            yield f"Open matrix {short_name(name)}", partial(app.open_matrix, name), "spectra and heatmap"

    async def discover(self) -> Hits:
        for text, callback, help_text in self._commands():
            if not text.startswith("Open matrix"):
                yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)
