"""One base checkpoint against one or more tuned ones (full checkpoints or LoRA adapters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spectui.checkpoint.adapters import ADAPTER_CONFIG, LoraAdapter, is_adapter_dir
from spectui.checkpoint.files import CheckpointError, TensorStore, locate, read_json, weight_files
from spectui.checkpoint.names import MatrixSpec
from spectui.checkpoint.pairing import Pairing, Skipped, pair
from spectui.checkpoint.source import WeightSource

if TYPE_CHECKING:
    from spectui.checkpoint.tuners import TunerAdapter


@dataclass
class TunedModel:
    source: WeightSource
    pairing: Pairing
    label: str

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def description(self) -> str:
        return self.source.description

    def spec(self, name: str) -> MatrixSpec | None:
        return self._by_name.get(name)

    def __post_init__(self):
        self._by_name = {spec.name: spec for spec in self.pairing.matrices}


@dataclass
class Comparison:
    base: TensorStore
    tuned: list[TunedModel]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # what the user should know was chosen for them

    def matrix_names(self, models: list[int] | None = None) -> list[str]:
        """Every base matrix that at least one (of the given) tuned models changes, in checkpoint order."""
        chosen = self.tuned if models is None else [self.tuned[i] for i in models]
        wanted = {spec.name for model in chosen for spec in model.pairing.matrices}
        expanded = self.base.experts().expanded(self.base.names())  # 3-D experts: their matrices in their place
        return [name for _, name in expanded if name in wanted]

    def add(self, path: Path, include_embeddings: bool = False) -> int:
        """Open one more tuned model against the same base; returns its index."""
        source = open_model(locate(str(path)), self.base)
        self.warnings += source.warnings()
        self.tuned.append(TunedModel(source, _pair(self.base, source, include_embeddings), source.label))
        for model, label in zip(self.tuned, _labels([m.path for m in self.tuned])):
            model.label = label  # a newcomer may make an earlier label ambiguous
        return len(self.tuned) - 1

    def check_output(self, out: Path, option: str) -> None:
        """Refuse an output that would replace a source model, hold one, or write inside a source's
        directory: sources are only ever read."""
        target = Path(out).resolve()
        for source in (self.base.path, *(model.path for model in self.tuned)):
            source = source.resolve()
            inside = source.is_dir() and source in target.parents
            if target == source or target in source.parents or inside:
                raise CheckpointError(out, f"would replace the source {source} or write inside it; "
                                           f"choose another {option}")

    def spec(self, name: str) -> MatrixSpec:
        return next(m.spec(name) for m in self.tuned if m.spec(name) is not None)


def open_store(path: Path) -> TensorStore:
    """Open a full checkpoint (directory or weights file) without reading any tensor data."""
    from spectui.checkpoint.gguf import GgufStore, gguf_file

    if (gguf := gguf_file(path)) is not None:  # llama.cpp's format: its config comes from its own header
        return GgufStore(gguf)
    directory = path if path.is_dir() else path.parent
    config_file = directory / "config.json"
    config = read_json(config_file) if config_file.is_file() else {}
    return TensorStore(path, weight_files(path), config)


def open_model(path: Path, base: TensorStore) -> WeightSource:
    """A checkpoint, or an adapter applied to `base`."""
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    from spectui.checkpoint.gguf import open_gguf_adapter
    from spectui.checkpoint.torchtune import open_torchtune_adapter

    for open_other_adapter in (open_gguf_adapter, open_torchtune_adapter):  # llama.cpp's and torchtune's LoRA
        if (source := open_other_adapter(path, base)) is not None:
            return source
    return open_adapter(path).weights(base) if is_adapter_dir(path) else open_store(path)


def open_adapter(path: Path) -> LoraAdapter | TunerAdapter:
    """An adapter directory's config and tensors, read once: LoRA (and DoRA) here, any other PEFT
    kind by its `peft_type` (checkpoint/tuners/)."""
    config = read_json(path / ADAPTER_CONFIG)
    peft_type = config.get("peft_type", "LORA")
    if not isinstance(peft_type, str):
        raise CheckpointError(path / ADAPTER_CONFIG, f"peft_type must be a string, not {peft_type!r}")
    if peft_type.upper() == "LORA":
        return LoraAdapter(path)
    from spectui.checkpoint.tuners import open_tuner

    return open_tuner(path, config, peft_type.upper())


def _pair(base: TensorStore, source: WeightSource, include_embeddings: bool) -> Pairing:
    """`pair`, with the matrices a source changes but cannot rebuild (a PEFT layer spectui cannot
    build, say) moved to the skipped ones with the source's reason."""
    pairing = pair(base, source, include_embeddings)
    reasons = source.unscannable() if hasattr(source, "unscannable") else {}
    if reasons:
        pairing.skipped += [Skipped(s.name, reasons[s.name]) for s in pairing.matrices if s.name in reasons]
        pairing.matrices = [s for s in pairing.matrices if s.name not in reasons]
    return pairing


def adapter_base(adapter: LoraAdapter | TunerAdapter) -> Path:
    """The base an adapter names in its config, found locally (path or Hugging Face cache). A
    relative path that means one directory from here and another from the adapter is refused."""
    reference = adapter.base_reference
    if not reference:
        raise CheckpointError(adapter.config_file, "names no base_model_name_or_path; pass BASE explicitly")
    if not Path(reference).expanduser().is_absolute():
        here, beside = Path(reference).resolve(), (adapter.path / reference).resolve()
        if here != beside and here.exists() and beside.exists():
            raise CheckpointError(adapter.config_file, f"names base model '{reference}', which could be "
                                                       f"{beside} (beside the adapter) or {here} (from here); "
                                                       "pass BASE explicitly")
    try:
        return locate(reference, relative_to=adapter.path)
    except CheckpointError as err:
        raise CheckpointError(
            adapter.config_file,
            f"names base model '{reference}', which is neither a local path nor in the local "
            "Hugging Face cache; pass BASE explicitly",
        ) from err


def open_comparison(base: str | None, tuned: list[str], include_embeddings: bool = False) -> Comparison:
    """Open everything lazily and pair names; no tensor data is read here."""
    if not tuned:
        raise CheckpointError(base or ".", "nothing to compare: give a tuned model or an adapter")
    tuned_paths = [locate(t) for t in tuned]
    first_adapter, notes = None, []
    if base is None:
        if not is_adapter_dir(tuned_paths[0]):
            raise CheckpointError(tuned_paths[0], "is not a PEFT adapter, so BASE must be given too")
        first_adapter = open_adapter(tuned_paths[0])
        base_path = adapter_base(first_adapter)
        notes.append(f"base {base_path}, as {first_adapter.config_file} names it")
    else:
        base_path = locate(base)
    if is_adapter_dir(base_path):
        raise CheckpointError(base_path, "is a PEFT adapter; BASE must be a full checkpoint")
    base_store = open_store(base_path)
    models, warnings = [], list(base_store.warnings())  # a quantized base: its noise is in every ΔW
    for i, (path, label) in enumerate(zip(tuned_paths, _labels(tuned_paths))):
        source = first_adapter.weights(base_store) if i == 0 and first_adapter else open_model(path, base_store)
        warnings += source.warnings()
        models.append(TunedModel(source, _pair(base_store, source, include_embeddings), label))
    return Comparison(base_store, models, warnings, notes)


# Directory names that say nothing alone: `runs/<name>/output` reads better as `<name>/output`.
GENERIC_NAMES = frozenset({"output", "outputs", "model", "adapter", "final", "merged"})


def _labels(paths: list[Path]) -> list[str]:
    """Directory names, lengthened with their parents where the name is generic or two would read
    the same."""

    def label(path: Path, depth: int) -> str:
        return "/".join(path.parts[-(depth + (path.name in GENERIC_NAMES)):])

    for depth in range(1, 5):
        labels = [label(p, depth) for p in paths]
        if len(set(labels)) == len(labels):
            break
    return labels
