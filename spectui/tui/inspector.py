"""The app's one handle on the engine and on what acts on its results: what is scanned, what has
landed, how it reads at (k, ε), mitigation plans, probes and exports, and runs' outputs joining
the comparison.

Screens and widgets never touch the engine; they ask the Inspector. The engine (and torch) is
imported only when the scan starts, in a worker, so the window paints first.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spectui.checkpoint.comparison import Comparison
from spectui.checkpoint.experts import expert_of
from spectui.checkpoint.names import MatrixSpec, layer_and_module, short_name
from spectui.defaults import DEFAULT_EPSILON, DEFAULT_K
from spectui.finetune.runs import Run, RunError, State
from spectui.intruders import MatrixCounts
from spectui.results import ScanResults

if TYPE_CHECKING:
    from spectui.cache import Cache
    from spectui.engine import Scan, ScanEvent
    from spectui.mitigate import Plan, Refit
    from spectui.probe import ProbeRow
    from spectui.spectral import MatrixResult


@dataclass(frozen=True)
class Entry:
    """One row of the matrix list: a scanned matrix, or a 2-D tensor left out with its reason."""

    name: str
    short: str
    layer: int | None
    module: str  # an expert's without its index: every expert of a layer shares it
    spec: MatrixSpec | None
    skip_reason: str | None
    expert: int | None  # a mixture-of-experts matrix's expert

    @classmethod
    def of(cls, name: str, spec: MatrixSpec | None = None, skip_reason: str | None = None) -> Entry:
        layer, module = layer_and_module(name)
        return cls(name, short_name(name), layer, module, spec, skip_reason, expert_of(name)[0])


_READING_ORDER = (
    "q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "attention.output.dense",
    "qkv_proj", "c_attn", "attn.c_proj", "out_proj", "router", "block_sparse_moe.gate", "mlp.gate",
    "gate_proj", "up_proj", "down_proj", "w1", "w3", "w2", "fc1", "fc2", "intermediate.dense", "output.dense",
    "c_fc", "mlp.c_proj",
)


def _reading_order(module: str) -> int:
    return next((i for i, tail in enumerate(_READING_ORDER) if module.endswith(tail)), len(_READING_ORDER))


def _model_order(entry: Entry) -> tuple:
    """Layer by layer (numerically: 2 before 10, where a checkpoint's sorted names put 10 first),
    inside one its module types in reading order, then its experts one by one; matrices outside
    layers after them, as stored."""
    if entry.layer is None:
        return (1,)
    expert = -1 if entry.expert is None else entry.expert
    return 0, entry.layer, expert, _reading_order(entry.module)


@dataclass(frozen=True)
class RowView:
    """One matrix as the list and grid show it at the current (k, ε)."""

    status: str  # pending | done | error | skipped
    count: int = 0
    random_like: bool = False
    delta_rel_norm: float | None = None
    spectra: bool = True  # False: its count is known (the counts phase), its spectra are still to come


class Inspector:
    def __init__(self, comparison: Comparison, cache_root: Path | None, device: str = "auto",
                 workers: int | None = None, cache_max: int | None = None, memory: int | None = None):
        self.comparison = comparison
        self.cache_root = cache_root
        self.cache_max = cache_max
        self.device = device
        self.workers = workers
        self.memory = memory
        self.scans: list[Scan] = []
        self.warn: Callable[[str], None] = lambda message: None  # told once, from a worker thread
        self.phase = "starting"  # what the scan is doing before its first result, in words
        self._phase_since = time.monotonic()
        self._on_event: Callable[[ScanEvent], None] | None = None
        self._wanted: list[tuple[str, bool]] = []

    # -- what there is ------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.comparison.tuned]

    def entries(self, model: int) -> list[Entry]:
        """Scanned matrices first, then 2-D tensors skipped for a reason, each in model order."""
        tuned = self.comparison.tuned[model]
        rows = sorted((Entry.of(s.name, spec=s) for s in tuned.pairing.matrices), key=_model_order)
        rows += sorted((Entry.of(s.name, skip_reason=s.reason) for s in tuned.pairing.skipped
                        if not s.reason.endswith("-D tensor") and s.reason != "not in tuned"), key=_model_order)
        return rows

    def module_order(self, model: int) -> list[str]:
        """The model's module types inside layers as a reader expects them (q, k, v, o, gate, up,
        down); others as stored. Read from its matrices, not the base's tensor names, where 3-D
        experts are one tensor (`mlp.experts.gate_up_proj`) for several matrices."""
        found = dict.fromkeys(e.module for e in self.entries(model) if e.layer is not None)
        return sorted(found, key=_reading_order)

    def one_d_skipped(self, model: int) -> int:
        return sum(s.reason == "1-D tensor" for s in self.comparison.tuned[model].pairing.skipped)

    # -- the scans ----------------------------------------------------------------------------
    def start(self, on_event: Callable[[ScanEvent], None], models: list[int] | None = None) -> Scan:
        """Scan the given tuned models (all at first); later calls add models to the comparison.
        Two phases: every matrix's intruder count at the paper's k and ε (minutes for an 8B pair
        where its spectra take an hour on a CPU), then every spectrum, the matrix in view first."""
        self._set_phase("loading the scan engine (torch)")
        from spectui.engine import Scan

        self._set_phase("reading the checkpoints' headers")
        self._on_event = on_event
        scan = Scan(self.comparison, self.cache(), device=self.device, workers=self.workers, memory=self.memory,
                    on_event=on_event, models=models, counts=(DEFAULT_K, DEFAULT_EPSILON), then_spectra=True)
        for name, spectra in self._wanted:
            scan.prioritize(name, spectra)
        self.scans.append(scan)
        self._set_phase("decomposing the first matrices")
        return scan.start()

    def _set_phase(self, phase: str) -> None:
        self.phase, self._phase_since = phase, time.monotonic()

    @property
    def phase_seconds(self) -> float:
        return time.monotonic() - self._phase_since

    def cache(self) -> Cache:
        """The scan cache; a cache that cannot be written is said once, and the scan goes on."""
        from spectui.cache import DEFAULT_MAX_BYTES, Cache

        return Cache(self.cache_root, warn=self.warn, max_bytes=self.cache_max or DEFAULT_MAX_BYTES)

    def add_model(self, path: Path) -> int:
        """One more tuned model (a finished run's output): the base's decompositions are cached."""
        index = self.comparison.add(path)
        if self._on_event is not None:
            self.start(self._on_event, models=[index])
        return index

    def prioritize(self, name: str, spectra: bool = True) -> None:
        """The matrix the user opened (its spectra) or only highlights (its count) goes first."""
        self._wanted = [(name, spectra)]
        for scan in self.scans:
            scan.prioritize(name, spectra)

    def stop(self) -> None:
        for scan in self.scans:
            scan.cancel()

    def pause(self, paused: bool) -> None:
        """Hold or go on with the scans still running (what is done is cached either way)."""
        for scan in self.scans:
            scan.pause(paused)

    @property
    def paused(self) -> bool:
        return any(scan.paused for scan in self.scans)

    @property
    def from_cache(self) -> int:
        """Results read from the cache: how much of the scan an earlier session had done."""
        return sum(scan.from_cache for scan in self.scans)

    @property
    def scan(self) -> Scan | None:
        return self.scans[-1] if self.scans else None

    @property
    def results(self) -> dict[tuple[int, str], MatrixResult]:
        """Every full result landed (the counts phase's are `counted`)."""
        merged = {}
        for scan in self.scans:
            merged.update((key, r) for key, r in list(scan.results.items()) if not isinstance(r, MatrixCounts))
        return merged

    def result(self, model: int, name: str) -> MatrixResult | None:
        """The matrix's full result (spectra, vectors, every (k, ε)), once its second phase is done."""
        found = self._landed(model, name)
        return None if isinstance(found, MatrixCounts) else found

    def counted(self, model: int, name: str) -> MatrixCounts | None:
        """The matrix's counts at the scan's (k, ε) while its spectra are still to come."""
        found = self._landed(model, name)
        return found if isinstance(found, MatrixCounts) else None

    def _landed(self, model: int, name: str):
        return next((s.results[(model, name)] for s in reversed(self.scans) if (model, name) in s.results), None)

    def error(self, name: str) -> str | None:
        failed = next((s.errors[name] for s in self.scans if name in s.errors), None)
        return failed.message if failed else None

    @property
    def errors(self) -> dict:
        merged = {}
        for scan in self.scans:
            merged.update(scan.errors)
        return merged

    def status(self, model: int, name: str) -> str:
        """pending | done | error | skipped: how a row should look."""
        if self.comparison.tuned[model].spec(name) is None:
            return "skipped"
        if self.error(name):
            return "error"
        return "done" if self.result(model, name) is not None else "pending"

    # -- read at (k, ε) -----------------------------------------------------------------------
    def row(self, model: int, name: str, k: int, epsilon: float) -> RowView:
        status = self.status(model, name)
        result = self.result(model, name)
        if result is not None:
            return RowView(status, result.intruders(k, epsilon), result.base_random_like, result.delta_rel_norm)
        counts = self.counted(model, name)
        if counts is not None and status == "pending" and k <= counts.k and epsilon == counts.epsilon:
            return RowView("done", counts.intruders(k, epsilon), spectra=False)
        return RowView(status)

    @property
    def scan_results(self) -> ScanResults:
        """Everything landed so far, for totals, curves and summaries (the CLI's and reports' type)."""
        return ScanResults(self.comparison, self.results, self.errors)

    def total(self, model: int, k: int, epsilon: float) -> int:
        """Intruders in the matrices whose count is known at (k, ε), counts phase included."""
        return sum(self.row(model, e.name, k, epsilon).count for e in self.entries(model) if e.spec is not None)

    def epsilon_curves(self, k: int) -> list[tuple[str, list[int]]]:
        """(label, intruders at each ε of EPSILON_SWEEP) for every tuned model: the Fig. 4 plot."""
        scan = self.scan_results
        return [(label, list(scan.epsilon_curve(i, k).values())) for i, label in enumerate(self.labels)]

    def with_intruders(self, model: int, k: int, epsilon: float) -> list[str]:
        return [e.name for e in self.entries(model) if e.spec is not None and self.row(model, e.name, k, epsilon).count]

    @property
    def progress(self) -> tuple[int, int, float | None]:
        """(done, total, eta seconds) over the scans still running (over all once none is)."""
        if not self.scans:
            return 0, len(self.comparison.matrix_names()), None
        running = [s for s in self.scans if not s.finished]
        if not running:  # everything scanned: the last scans' figures (a model added scans again)
            return sum(s.done for s in self.scans), sum(s.total for s in self.scans), 0.0
        etas = [e for e in (s.eta() for s in running) if e is not None]
        return sum(s.done for s in running), sum(s.total for s in running), max(etas, default=None)

    @property
    def finished(self) -> bool:
        return bool(self.scans) and all(s.finished for s in self.scans)

    @property
    def phases(self) -> list[tuple[str, int, int]]:
        """(phase, matrices through it, matrices) over the scans still running."""
        running = [s for s in self.scans if not s.finished]
        phases = dict.fromkeys(p for s in running for p in s.phases)
        return [(p, sum(s.phase_done(p) for s in running if p in s.phases),
                 sum(len(s.names) for s in running if p in s.phases)) for p in phases]

    def matrices_per_model(self) -> list[int]:
        """How many matrices each tuned model has to scan (a scan's total counts base matrices
        once, however many models change them)."""
        return [len(model.pairing.matrices) for model in self.comparison.tuned]

    def where(self, model: int, k: int, epsilon: float) -> str:
        """One line on where the model's intruders are: module types and layers that hold most."""
        counts = []
        for entry in self.entries(model):
            if entry.spec is not None and (count := self.row(model, entry.name, k, epsilon).count):
                counts.append((entry.layer, entry.module, count))
        return where_intruders(counts)

    # -- fine-tuning runs' outputs ------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        """The directory of the base model: what a new fine-tuning run starts from."""
        path = self.comparison.base.path
        return path if path.is_dir() else path.parent

    def run_output(self, run: Run) -> int:
        """The index of a finished run's output in the comparison, added (and scanned) if new; a
        RunError says why it cannot join."""
        if (state := run.status().state) is not State.DONE:
            raise RunError(f"{run.name} has no output: it is {state.value}")
        output = run.output_dir.resolve()
        base, ours = Path(run.spec().base).resolve(), self.base_dir.resolve()
        if base != ours:
            raise RunError(f"{run.name} fine-tuned {base}, not the inspected base {ours}; open it "
                           f"with: spectui {base} {output}")
        paths = [model.path.resolve() for model in self.comparison.tuned]
        return paths.index(output) if output in paths else self.add_model(output)

    # -- mitigation ---------------------------------------------------------------------------
    def plan(self, model: int, k: int, epsilon: float, scope: str) -> Plan | None:
        """The intruders mitigation scales at (k, ε) in this scope; None until the scan is done."""
        from spectui.mitigate import plan

        return plan(self.scan_results, model, k, epsilon, scope) if self.finished else None

    def probe_sweep(self, chosen: Plan, text: Path, task: Path | None,
                    lambdas: Sequence[float]) -> Iterator[ProbeRow]:
        """The base, the tuned model, then the model mitigated at each λ: rows as they are scored."""
        from spectui.probe import Probe, ProbeRow, model_sweep

        source = self.comparison.tuned[chosen.model_index].source
        probe = Probe(self.comparison.base.path, text, task, classification=source.is_classifier)
        yield ProbeRow("base", None, *probe.score())
        yield from model_sweep(probe, self.comparison, chosen, lambdas)

    def export(self, chosen: Plan, lam: float, out: Path, *, merged: bool = False,
               rank_extra: bool = False) -> list[Refit]:
        """Write the mitigated model (the input's kind, or `merged` into the base's files; a
        re-fitted LoRA at rank r, or r + its intruders with `rank_extra`); refused before any work
        if `out` is taken."""
        from spectui.mitigate import check_export, export

        check_export(self.comparison, chosen.model_index, out, merged=merged, force=False)
        return export(self.comparison, chosen, lam, out, merged=merged, rank_extra=rank_extra)

    def refittable(self, model: int) -> bool:
        """Whether an export of this model re-fits LoRA factors (else: a full checkpoint, or merged)."""
        source = self.comparison.tuned[model].source
        return source.is_adapter and source.refittable() is not None

    def refit_errors(self, chosen: Plan, lam: float, rank_extra: bool = False) -> list[Refit]:
        """What re-fitting the adapter at λ would lose, per module, computed without writing."""
        from spectui.mitigate import refit_errors

        return refit_errors(self.comparison, chosen, lam, rank_extra)


def where_intruders(counts: list[tuple[int | None, str, int]]) -> str:
    """`counts`: (layer, module type, intruders) of each matrix with intruders. Says the total, the
    fewest module types (one or two) that hold at least half of it, and the narrowest run of
    layers that does, each when it is well above an even spread; or that they are spread evenly."""
    total = sum(count for _, _, count in counts)
    if not total:
        return "no intruders at these thresholds"
    by_module = Counter()
    by_layer = Counter()
    for layer, module, count in counts:
        by_module[module] += count
        if layer is not None:
            by_layer[layer] += count
    parts = [f"{total} intruder{'' if total == 1 else 's'}"]
    if len(counts) == 1:
        layer, module, _ = counts[0]
        return parts[0] + f": all in {module}" + ("" if layer is None else f", layer {layer}")
    modules, held = [], 0
    for module, count in by_module.most_common():
        if held * 2 >= total:
            break
        modules.append(module)
        held += count
    if len(modules) <= min(2, len(by_module) - 1) and _concentrated(held / total, len(modules) / len(by_module)):
        parts.append(f"{held / total:.0%} in {_module_names(modules)}")
    span = _layer_span(by_layer, total)
    if span is not None and _concentrated(span[1] / total, (span[0][1] - span[0][0] + 1) / len(by_layer)):
        (first, last), held = span
        layers = f"layer {first}" if first == last else f"layers {first}–{last}"
        parts.append(f"{held / total:.0%} in {layers}")
    if len(parts) == 1:
        parts.append("spread over every module type and layer")
    return parts[0] + ": " + ", ".join(parts[1:])


def _concentrated(share: float, of_places: float) -> bool:
    """Whether a share of the intruders in a share of the places is worth saying (well above even)."""
    return share >= 1.5 * of_places


def _module_names(modules: list[str]) -> str:
    """mlp.gate_proj, mlp.up_proj → mlp.gate/up."""
    heads = {m.rpartition(".")[0] for m in modules}
    tails = [m.rpartition(".")[2].removesuffix("_proj") for m in modules]
    if len(heads) == 1 and "" not in heads:
        return f"{heads.pop()}.{'/'.join(tails)}"
    return "/".join(m.removesuffix("_proj") for m in modules)


def _layer_span(by_layer: Counter, total: int) -> tuple[tuple[int, int], int] | None:
    """The narrowest run of consecutive layers holding at least half of the intruders (of two as
    narrow, the one holding more), if it is narrower than all the layers that have any."""
    layers = sorted(by_layer)
    if len(layers) < 2:
        return None
    best = None
    for i, first in enumerate(layers):
        held = 0
        for last in layers[i:]:
            held += by_layer[last]
            if held * 2 >= total:
                width = last - first
                if best is None or (width, -held) < (best[0][1] - best[0][0], -best[1]):
                    best = ((first, last), held)
                break
    if best is None or best[0] == (layers[0], layers[-1]):
        return None
    return best


def next_with_intruders(order: list[str], current: str | None, flagged: set[str], step: int) -> str | None:
    """The next (step 1) or previous (step -1) name in `order` that is flagged, wrapping around."""
    candidates = [n for n in order if n in flagged]
    if not candidates:
        return None
    if current not in order:
        return candidates[0 if step > 0 else -1]
    start = order.index(current)
    for offset in range(1, len(order) + 1):
        name = order[(start + step * offset) % len(order)]
        if name in flagged:
            return name
    return None
