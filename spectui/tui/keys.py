"""The keys that work everywhere, in one table: the app binds them, screens put the ones that
matter to them in their footer (in their own order, main actions first), the help screen and the
command palette list them with their keys.

And one fix to how keys are read: a terminal sends Escape as the byte ESC, which also starts
Alt+key and other sequences, so Textual reads "Esc then r" arriving together (a fast typist, a
paste, `tmux send-keys Escape r`) as Alt+r, and "Esc then Enter" as Enter alone — the Escape is lost
and the screen never closes. spectui binds no Alt keys, so ESC followed by one character is read
as Escape and that character.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    key: str  # Textual's key names, comma-separated for several
    action: str  # an action of the app
    description: str  # the footer's word
    help: str  # a line for the help screen and the palette
    display: str | None = None  # how the key is written when its name is not the key itself

    @property
    def shown_key(self) -> str:
        return self.display or self.key


MAIN = (
    Key("s", "mitigate", "Mitigate", "scale intruders down by λ: preview, sweep λ, export the repaired model"),
    Key("c", "compare", "Compare", "every tuned model side by side: totals, ε and k curves"),
    Key("x", "export", "Export", "the scan as JSON, CSV and an SVG screenshot, then HTML and Markdown reports"),
    Key("r", "train", "Train", "fine-tune the base: a new run, detached (it outlives spectui)"),
    Key("R", "runs", "Runs", "fine-tuning runs: state, progress, open or add a result"),
    Key("S", "studies", "Studies", "a study's results: its table and the paper's views (ranks, or a sequence)"),
    Key("question_mark", "help", "Help", "this list of keys", "?"),
    Key("q", "quit", "Quit", "leave spectui (training runs go on in the background)"),
)
THRESHOLDS = (
    Key("left_square_bracket", "epsilon(-0.05)", "ε−", "lower ε by 0.05 (fewer intruders)", "["),
    Key("right_square_bracket", "epsilon(0.05)", "ε+", "raise ε by 0.05 (more intruders)", "]"),
    Key("minus", "k(-1)", "k−", "test one fewer top singular vector", "-"),
    Key("plus,equals_sign", "k(1)", "k+", "test one more top singular vector", "+"),
    Key("t", "thresholds", "k/ε…", "type k and ε"),
    Key("m", "next_model", "Model", "show the next tuned model (when there are several)"),
    Key("P", "pause_scan", "Pause", "pause or go on with the background scan (results so far are cached: "
        "quitting loses nothing, the next start reads them)"),
)
GLOBAL = MAIN + THRESHOLDS
PALETTE_KEY = ("ctrl+p", "command palette: every action and every matrix by name")


def app_bindings() -> list[Binding]:
    """Every global key, bound on the app; none in the footer (screens choose theirs)."""
    return [Binding(k.key, k.action, k.description, show=False, key_display=k.display, tooltip=k.help)
            for k in GLOBAL]


def footer(*actions: str) -> list[Binding]:
    """Global keys a screen shows in its footer, in this order (they run the app's action)."""
    by_action = {k.action: k for k in GLOBAL}
    return [Binding(k.key, f"app.{k.action}", k.description, key_display=k.display, tooltip=k.help)
            for k in (by_action[action] for action in actions)]


def read_escape_before_a_key() -> None:
    """Make Textual's terminal reader take ESC + one character as Escape, then the character
    (see the module's docstring). Done once per process, before the app reads its first key."""
    try:
        from textual._xterm_parser import XTermParser
    except ImportError:  # a private module: another Textual version reads keys its own way
        return
    original = getattr(XTermParser, "_sequence_to_key_events", None)
    if original is None or getattr(original, "_spectui", False):
        return

    def sequence_to_key_events(self, sequence: str, alt: bool = False):
        if alt and len(sequence) == 1:
            yield events.Key("escape", "\x1b")
            yield from original(self, sequence, False)
        else:
            yield from original(self, sequence, alt)

    sequence_to_key_events._spectui = True
    XTermParser._sequence_to_key_events = sequence_to_key_events
