"""One format per quantity, for every number the TUI shows: tables, summaries, plot legends.

The reports share `ratio` and `rank` (spectui.report.summary), so a ΔW/W0 or an effective rank
reads the same in the list, the Compare view, the matrix view, the Markdown and the HTML.
Singular vectors are numbered from 0 everywhere (the JSON's `intruder_ranks` too); `RANKS_FROM`
says so wherever a rank is shown.
"""

from __future__ import annotations

from spectui.report.summary import rank, ratio

__all__ = ["RANKS_FROM", "angle", "cosine", "drift", "loss", "perplexity", "rank", "ranks", "ratio", "share",
           "sigma"]

RANKS_FROM = "from 0"  # singular vectors' ranks, as the JSON's intruder_ranks count them


def sigma(value: float | None) -> str:
    """A singular value: three significant figures, trailing zeros kept so columns line up
    (whole numbers from 1000 on)."""
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:#.3g}".rstrip(".")


def cosine(value: float | None) -> str:
    """|cos| between singular vectors, in [0, 1]: three decimals (ε is compared at two)."""
    return "–" if value is None else f"{value:.3f}"


def ranks(values: list[int]) -> str:
    return ", ".join(map(str, values))


def loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def perplexity(value: float | None) -> str:
    return "–" if value is None else f"{value:#.4g}".rstrip(".")


def share(value: float | None) -> str:
    """A fraction as a percentage with one decimal (refit errors, accuracy)."""
    return "–" if value is None else f"{value:.1%}"


def angle(value: float | None) -> str:
    """A principal angle in degrees, one decimal (the reports' median angle reads the same)."""
    return "–" if value is None else f"{value:.1f}°"


def drift(value: float | None) -> str:
    """A relative change (spectral drift), signed, as a percentage with one decimal; NaN (a zero
    base singular value) has none."""
    return "–" if value is None or value != value else f"{value:+.1%}"
