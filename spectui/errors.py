"""Library errors told to the user in one line (bad input is always one sentence, never a traceback)."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a (often multi-line) library message, whitespace collapsed, bounded."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
