"""Command palette entries: every global action with its key, the keys of the screen shown, and
every matrix by name."""

from __future__ import annotations

from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from spectui.checkpoint.names import short_name
from spectui.tui.keys import GLOBAL


class SpectuiCommands(Provider):
    def _commands(self):
        app, screen = self.app, self.screen  # the screen the palette was opened on
        for binding in getattr(screen, "BINDINGS", []):  # the screen's own keys first
            if not isinstance(binding, Binding) or binding.action.startswith("app.") or binding.key == "escape":
                continue
            label = binding.key_display or binding.key
            yield (f"{binding.description} ({label})", partial(screen.run_action, binding.action),
                   binding.tooltip or binding.description)
        for key in GLOBAL:
            if key.action == "next_model" and len(app.inspector.labels) < 2:
                continue
            yield f"{key.description} ({key.shown_key})", partial(app.run_action, key.action), key.help
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
