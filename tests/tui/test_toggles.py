"""Check boxes and radio buttons must show their state in the glyph: NO_COLOR and 16-colour
terminals cannot tell Textual's coloured marks apart."""

from textual.app import App
from textual.widgets import RadioSet

from spectui.tui.widgets.toggles import Check, Choice


class Toggles(App):
    def compose(self):
        yield Check("α = 2r", id="check")
        with RadioSet():
            yield Choice("top", value=True, id="top")
            yield Choice("all", id="all")


def mark(widget) -> str:
    return str(widget.render())[1]  # between the button's two half-blocks


async def test_the_mark_shows_the_state_without_colour():
    app = Toggles()
    async with app.run_test() as pilot:
        check, top, other = (app.query_one(f"#{i}") for i in ("check", "top", "all"))
        assert (mark(check), mark(top), mark(other)) == (" ", "●", " ")
        check.value = other.value = True  # the radio set turns `top` off
        await pilot.pause()
        assert (mark(check), mark(top), mark(other)) == ("X", " ", "●")
