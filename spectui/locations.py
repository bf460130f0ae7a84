"""Where spectui's files live: the scan cache, fine-tuning runs, presets and the bundled samples.

The one place that reads the environment for a path (XDG base directories, `SPECTUI_*`), so
every command and screen agrees, and tests redirect all of it with environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS_ENV = "SPECTUI_RUNS_DIR"
SAMPLES_ENV = "SPECTUI_SAMPLES"
SAMPLE_TUNED = ("lora", "full")


def _xdg(variable: str, fallback: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / fallback) / "spectui"


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/spectui (~/.cache/spectui): decompositions and per-pair results."""
    return _xdg("XDG_CACHE_HOME", ".cache")


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/spectui (~/.config/spectui)."""
    return _xdg("XDG_CONFIG_HOME", ".config")


def presets_dir() -> Path:
    """Named fine-tuning specs, shared by every project."""
    return config_dir() / "presets"


def state_dir() -> Path:
    """$XDG_STATE_HOME/spectui (~/.local/state/spectui): logs of internal errors."""
    return _xdg("XDG_STATE_HOME", ".local/state")


def runs_dir(root: str | Path | None = None) -> Path:
    """Fine-tuning runs: the argument, else $SPECTUI_RUNS_DIR, else ./runs."""
    return Path(root or os.environ.get(RUNS_ENV) or "runs")


def samples_dir() -> Path:
    """$SPECTUI_SAMPLES, else the checkout this package was installed from, else ./sample_models."""
    if os.environ.get(SAMPLES_ENV):
        return Path(os.environ[SAMPLES_ENV])
    beside_package = Path(__file__).resolve().parent.parent / "sample_models"
    return beside_package if beside_package.is_dir() else Path("sample_models")


def sample_comparison() -> tuple[str, list[str]]:
    """The bundled base and its tuned models: what `spectui` opens with no paths."""
    root = samples_dir()
    return str(root / "base"), [str(root / name) for name in SAMPLE_TUNED]


def shown(path: Path) -> str:
    """A path as a field shows it: from the working directory when it lies below it (shorter, and
    the same wherever the checkout is), else whole."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
