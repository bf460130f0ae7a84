"""A text field whose editing keys act in the order they were typed.

Textual hands a key to the focused widget's queue, and runs that widget's key bindings (backspace,
End, Enter: all of an Input's editing) only when the key has bubbled back up to the app, while a
printable character is inserted as soon as the widget reads it. Keys read together (a fast typist,
`tmux send-keys l End BSpace BSpace 3 Enter`) were therefore applied out of order: the 3 typed
first, then deleted by the backspaces meant for the old text. A Field runs its own bindings where it
reads the key, so the text is what was typed.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class Field(Input):
    async def _on_key(self, event: events.Key) -> None:
        bindings = self._bindings.key_to_bindings.get(event.key)
        if bindings and not event.is_printable:
            event.stop()
            event.prevent_default()
            await self.run_action(bindings[0].action)
            return
        await super()._on_key(event)
