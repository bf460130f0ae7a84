"""Where the bundled sample models live, so `spectui` and `spectui scan` work with no paths."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_TUNED = ("lora", "full")


def samples_dir() -> Path:
    """`$SPECTUI_SAMPLES`, else the checkout this package was installed from, else ./sample_models."""
    if os.environ.get("SPECTUI_SAMPLES"):
        return Path(os.environ["SPECTUI_SAMPLES"])
    beside_package = Path(__file__).resolve().parent.parent / "sample_models"
    return beside_package if beside_package.is_dir() else Path("sample_models")


def sample_comparison() -> tuple[str, list[str]]:
    root = samples_dir()
    return str(root / "base"), [str(root / name) for name in SAMPLE_TUNED]
