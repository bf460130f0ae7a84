"""Every PEFT tuner that changes weight matrices, other than LoRA (adapters.py), read as the tuned
weights it stands for without building a model: one module per kind, sharing `base.TunerAdapter`.

AdaLoRA, LoHa, LoKr, OFT, BOFT, IA³, VeRA and FourierFT are merged here as PEFT's layer code merges
them; any other kind goes through PEFT's own layer code one module at a time (`general.py`). Kinds
that only add virtual tokens change no weight and are refused.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from spectui.checkpoint.files import CheckpointError
from spectui.checkpoint.tuners.base import TunerAdapter, TunerWeights

# PEFT's prompt-learning kinds and adaption prompts: they add virtual tokens, a cache or gated prompt
# attention, and leave every weight as it was.
PROMPT_LEARNING = frozenset({"PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "CPT",
                             "CARTRIDGE", "ADAPTION_PROMPT"})


def _kinds() -> dict[str, type[TunerAdapter]]:
    from spectui.checkpoint.tuners.adalora import AdaloraAdapter
    from spectui.checkpoint.tuners.boft import BoftAdapter
    from spectui.checkpoint.tuners.fourierft import FourierFTAdapter
    from spectui.checkpoint.tuners.ia3 import Ia3Adapter
    from spectui.checkpoint.tuners.loha import LohaAdapter
    from spectui.checkpoint.tuners.lokr import LokrAdapter
    from spectui.checkpoint.tuners.oft import OftAdapter
    from spectui.checkpoint.tuners.vera import VeraAdapter

    kinds = (AdaloraAdapter, LohaAdapter, LokrAdapter, OftAdapter, BoftAdapter, Ia3Adapter, VeraAdapter,
             FourierFTAdapter)
    return {kind.peft_type: kind for kind in kinds}


def open_tuner(path: Path, config: dict, peft_type: str) -> TunerAdapter:
    """The adapter of kind `peft_type` (upper case, not LORA) in `path`, its config already read."""
    if peft_type in PROMPT_LEARNING:
        raise CheckpointError(path / "adapter_config.json", f"is a {peft_type} adapter, which adds tokens or "
                                                            "prompts and changes no weight; there is nothing to "
                                                            "compare")
    kind = _kinds().get(peft_type)
    if kind is not None:
        return kind(path, config)
    if not _peft_may_know(peft_type):  # refused without the seconds importing PEFT takes
        raise CheckpointError(path / "adapter_config.json", f"peft_type {peft_type!r} is not a kind of adapter "
                                                            "PEFT knows")
    from spectui.checkpoint.tuners.general import GeneralAdapter

    return GeneralAdapter(path, config, peft_type)


def _peft_may_know(peft_type: str) -> bool:
    """Whether the installed PEFT has a tuner package of that name (PeftType X lives in tuners/x)."""
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", peft_type):
        return False
    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        return True  # the general path says PEFT is missing
    return any((Path(root) / "tuners" / peft_type.lower()).is_dir() for root in spec.submodule_search_locations)


__all__ = ["PROMPT_LEARNING", "TunerAdapter", "TunerWeights", "open_tuner"]
