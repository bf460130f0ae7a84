"""What LoHa and LoKr share (PEFT `tuners/lycoris_utils.py`): r, alpha, and their per-module
`rank_pattern` / `alpha_pattern`, matched as PEFT's `get_pattern_key` matches them."""

from __future__ import annotations

from spectui.checkpoint.adapters import _pattern_value, _patterns
from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import Module, TunerAdapter
from spectui.validate import integer, number


class LycorisAdapter(TunerAdapter):
    """LoHa and LoKr share LyCORIS's config: r, alpha and their per-module patterns."""

    def read_config(self) -> None:
        file = self.config_file
        self.r = integer(self.config.get("r", 8), file, "r", minimum=1, error=CheckpointError)
        self.alpha = number(self.config.get("alpha", 8), file, "alpha", error=CheckpointError)
        self.rank_pattern = _patterns(self.config, "rank_pattern", file,
                                      lambda v, f: integer(v, file, f, 1, CheckpointError))
        self.alpha_pattern = _patterns(self.config, "alpha_pattern", file,
                                       lambda v, f: number(v, file, f, CheckpointError))

    @property
    def description(self) -> str:
        return f"{self.kind} r={self.r} α={self.alpha:g}"

    def rank_alpha(self, module: Module) -> tuple[int, float]:
        r = _pattern_value(self.rank_pattern, module.path, self.r, self.config_file, "rank_pattern")
        alpha = _pattern_value(self.alpha_pattern, module.path, self.alpha, self.config_file, "alpha_pattern")
        return r, alpha
