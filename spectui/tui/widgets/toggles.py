"""Check boxes and radio buttons whose state shows in the glyph, not only in its colour: Textual
draws the same mark on and off, which NO_COLOR and 16-colour terminals cannot tell apart."""

from __future__ import annotations

from textual.widgets import Checkbox, RadioButton


class Check(Checkbox):
    @property
    def BUTTON_INNER(self) -> str:  # Textual reads the mark from here
        return "X" if self.value else " "


class Choice(RadioButton):
    @property
    def BUTTON_INNER(self) -> str:
        return "●" if self.value else " "
