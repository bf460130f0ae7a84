"""A study's results, and the paper's views of them as plain data for the CLI, the TUI and the
HTML report: the results table; intruders, forgetting and the effective rank of ΔW against rank
(the rank study); the forgetting matrix (task × stage) and intruders against stage (sequences).

results.json is written by the study's process (spectui.study) and read back here, every value
checked (`read_results`: a damaged file is a StudyResultsError naming it):

    version, name, kind ("study" or "sequence"), base, reference, k, epsilons,
    tasks        [{name, data, heldout}]: the data trained on, and the held-out examples the
                 task metric is measured on (LM loss, nats per token)
    base_scores  {reference_loss, task_loss: [one per task]} of the untuned base, or null
    members      [MemberResult]: one per run, in training order, evaluated or not

A member's `task_loss[i]` is its loss on task i's held-out examples (a sequence's stage measures
every task seen so far; null for the others); `reference_loss` is forgetting's measure, the loss
on the reference text; `intruders[ε]` the model's total at k for each ε of the sweep, counted
against the original base (a sequence's LoRA stage: its adapter merged into its starting model).

Only the standard library is needed here: the TUI reads results while its heavy imports wait.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spectui.atomic import write_text
from spectui.errors import FileInputError
from spectui.validate import is_int, is_number, json_object

VERSION = 1
TABLE_EPSILONS = (0.5, 0.6, 0.7, 0.8, 0.9)  # the ε of the table and of the rank curves
RESULTS_LIMIT = 16 << 20  # a few KB per member


class StudyResultsError(FileInputError):
    """A results file that cannot be read."""


@dataclass(frozen=True)
class TaskInfo:
    name: str  # the data file's stem
    data: str
    heldout: str


@dataclass(frozen=True)
class BaseScores:
    reference_loss: float
    task_loss: list[float]


@dataclass(frozen=True)
class MemberResult:
    """One run of a study and what was measured of its model (nothing until it is evaluated)."""

    name: str  # the run's name in the runs directory
    line: str  # r8, full, r8-lr0.001
    method: str
    rank: int | None  # None: full fine-tuning
    lr: float
    task: int  # the task it was trained on (index into StudyResults.tasks)
    stage: int | None  # 1, 2, … in a sequence
    state: str  # the run's: done, failed, cancelled, …
    message: str = ""
    steps: int | None = None  # optimizer steps trained
    task_loss: list[float | None] = field(default_factory=list)
    reference_loss: float | None = None
    intruders: dict[str, int] = field(default_factory=dict)  # str(ε) → total at k
    median_effective_rank: float | None = None  # of ΔW, over the scanned matrices
    median_rel_norm: float | None = None  # ‖ΔW‖_F / ‖W0‖_F
    matrices: int = 0  # matrices scanned
    scan_errors: int = 0  # matrices that could not be scanned
    model: str | None = None  # the directory compared with the base

    @property
    def rank_label(self) -> str:
        return "full" if self.rank is None else f"r{self.rank}"

    @property
    def evaluated(self) -> bool:
        return self.reference_loss is not None

    @property
    def own_task_loss(self) -> float | None:
        """The loss on the task it was trained on."""
        return self.task_loss[self.task] if self.task < len(self.task_loss) else None

    def intruders_at(self, epsilon: float) -> int | None:
        return self.intruders.get(str(epsilon))


@dataclass(frozen=True)
class StudyResults:
    name: str
    kind: str  # "study" or "sequence"
    base: str
    reference: str
    k: int
    epsilons: list[float]
    tasks: list[TaskInfo]
    base_scores: BaseScores | None
    members: list[MemberResult]
    evaluation: str = ""  # what the figures depend on besides the runs (base, texts, k): a rerun
    #                       with other evaluation settings measures every member again
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def lines(self) -> list[str]:
        """The fine-tunes compared, in training order."""
        return list(dict.fromkeys(member.line for member in self.members))

    def member(self, name: str) -> MemberResult | None:
        return next((member for member in self.members if member.name == name), None)

    def line_members(self, line: str) -> list[MemberResult]:
        """A line's members; in a sequence, its stages in order."""
        return sorted((m for m in self.members if m.line == line), key=lambda m: m.stage or 0)

    def with_member(self, result: MemberResult) -> StudyResults:
        """These results with one member's entry replaced (or added)."""
        members = [result if m.name == result.name else m for m in self.members]
        if result.name not in {m.name for m in self.members}:
            members.append(result)
        return replace(self, members=members)


def write_results(path: Path, results: StudyResults) -> None:
    """Written aside and renamed: a reader never sees half of it."""
    write_text(path, json.dumps(results.to_dict(), indent=1) + "\n")


# -- the views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str  # the key of the value in each row
    title: str


@dataclass(frozen=True)
class Table:
    columns: list[Column]
    rows: list[dict[str, Any]]  # values: str, int, float or None (not measured)


@dataclass(frozen=True)
class Series:
    """One curve: y (None where not measured) at each labelled x."""

    label: str
    x: list[str]
    y: list[float | None]


@dataclass(frozen=True)
class Matched:
    """One member per rank (and full), each the one whose task loss is nearest the target: the
    best task loss every rank reached (the worst of their bests), so that forgetting is compared
    at matched task performance, as in the paper."""

    target: float | None
    members: list[MemberResult]


@dataclass(frozen=True)
class ForgettingMatrix:
    """Task loss of one line of a sequence: loss[task][stage], stage 0 the base; None where a
    stage was not measured on a task (not yet seen, or not trained)."""

    line: str
    tasks: list[str]
    stages: list[str]  # "base", "1", "2", …
    loss: list[list[float | None]]

    def forgetting(self) -> list[float | None]:
        """Per task: its loss after the last stage measured minus its loss right after its own
        stage (how much later stages undid it); None for the last task or where not measured."""
        result = []
        for task, row in enumerate(self.loss):
            own = row[task + 1] if task + 1 < len(row) else None
            later = [value for value in row[task + 2:] if value is not None]
            result.append(later[-1] - own if own is not None and later else None)
        return result


def results_table(results: StudyResults, epsilons: tuple[float, ...] = TABLE_EPSILONS) -> Table:
    """One row per member: rank (or full), lr, steps, the task metric, the reference loss,
    intruders at k for each ε, and the median effective rank of ΔW."""
    sequence = results.kind == "sequence"
    columns = [Column("member", "member"), Column("rank", "rank"), Column("lr", "lr"),
               Column("steps", "steps")]
    if sequence:
        columns += [Column("stage", "stage"), Column("task", "task")]
    columns += [Column("task_loss", "task loss"), Column("reference_loss", "reference loss")]
    columns += [Column(f"intruders_{eps}", f"intruders ε={eps:g}") for eps in epsilons]
    columns += [Column("effective_rank", "eff. rank ΔW"), Column("state", "state")]
    rows = []
    for member in results.members:
        row: dict[str, Any] = {
            "member": member.name, "rank": "full" if member.rank is None else member.rank,
            "lr": member.lr, "steps": member.steps,
        }
        if sequence:
            row.update(stage=member.stage, task=results.tasks[member.task].name)
        row.update(task_loss=member.own_task_loss, reference_loss=member.reference_loss)
        row.update({f"intruders_{eps}": member.intruders_at(eps) for eps in epsilons})
        row.update(effective_rank=member.median_effective_rank, state=member.state)
        rows.append(row)
    return Table(columns, rows)


def cell_text(value: Any, signed: bool = False) -> str:
    """A cell as the CLI, the TUI and the report write it: — where not measured, whole numbers
    plain, losses to four decimals (signed: a change), tiny values to two figures."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6 and not signed:
            return f"{value:.0f}"
        return f"{value:+.4f}" if signed else (f"{value:.4f}" if value >= 1e-3 else f"{value:.2g}")
    return str(value)


def table_cells(table: Table) -> list[list[str]]:
    """Each row's cells as text in column order: learning rates as written (0.001, 2e-05), the
    rest by `cell_text`."""
    return [[f"{row[column.key]:g}" if column.key == "lr" and row[column.key] is not None
             else cell_text(row[column.key]) for column in table.columns] for row in table.rows]


def matched(results: StudyResults) -> Matched:
    """Per rank (ranks ascending, then full), the evaluated member nearest the matched task loss
    (with one learning rate per rank, simply each rank's member)."""
    groups: dict[str, list[MemberResult]] = {}
    for member in sorted(_final(results), key=_rank_order):
        if member.evaluated and member.own_task_loss is not None:
            groups.setdefault(member.rank_label, []).append(member)
    if not groups:
        return Matched(None, [])
    target = max(min(m.own_task_loss for m in group) for group in groups.values())
    chosen = [min(group, key=lambda m: abs(m.own_task_loss - target)) for group in groups.values()]
    return Matched(target, chosen)


def rank_grid(results: StudyResults) -> bool:
    """Whether a rank study trained some rank at several learning rates: then ranks are compared at
    matched task loss (`matched`), else each rank's one member stands for it."""
    ranks = [member.rank_label for member in results.members]
    return results.kind == "study" and len(set(ranks)) < len(ranks)


def intruders_vs_rank(results: StudyResults, epsilons: tuple[float, ...] = TABLE_EPSILONS) -> list[Series]:
    """Intruders (total at k) against rank, one curve per ε (the matched member of each rank)."""
    members = matched(results).members
    x = [member.rank_label for member in members]
    return [Series(f"ε={eps:g}", x, [_float(member.intruders_at(eps)) for member in members])
            for eps in epsilons]


def forgetting_vs_rank(results: StudyResults) -> list[Series]:
    """Reference loss (forgetting) and the task loss against rank, at matched task loss."""
    members = matched(results).members
    x = [member.rank_label for member in members]
    return [Series("reference loss", x, [member.reference_loss for member in members]),
            Series("task loss", x, [member.own_task_loss for member in members])]


def effective_rank_vs_rank(results: StudyResults) -> Series:
    """Median effective rank of ΔW against rank (full fine-tuning's is far higher)."""
    members = matched(results).members
    return Series("effective rank of ΔW", [m.rank_label for m in members],
                  [m.median_effective_rank for m in members])


def forgetting_matrix(results: StudyResults, line: str) -> ForgettingMatrix:
    """A sequence line's task × stage losses; stage 0 is the base."""
    stages = results.line_members(line)
    tasks = [task.name for task in results.tasks]
    loss: list[list[float | None]] = []
    for index in range(len(tasks)):
        base = results.base_scores.task_loss[index] if results.base_scores else None
        row = [base] + [m.task_loss[index] if index < len(m.task_loss) and m.evaluated else None
                        for m in stages]
        loss.append(row)
    return ForgettingMatrix(line, tasks, ["base"] + [str(m.stage or 1) for m in stages], loss)


def intruders_vs_stage(results: StudyResults, epsilon: float = 0.5) -> list[Series]:
    """Per sequence line, intruders of each stage's model against the original base (0 at the
    base itself)."""
    curves = []
    for line in results.lines:
        stages = results.line_members(line)
        curves.append(Series(line, ["base"] + [str(m.stage) for m in stages],
                             [0.0] + [_float(m.intruders_at(epsilon)) for m in stages]))
    return curves


def reference_vs_stage(results: StudyResults) -> list[Series]:
    """Per sequence line, the reference loss (forgetting of pre-training) after each stage."""
    base = results.base_scores.reference_loss if results.base_scores else None
    return [Series(line, ["base"] + [str(m.stage) for m in results.line_members(line)],
                   [base] + [m.reference_loss for m in results.line_members(line)])
            for line in results.lines]


def report_section(results: StudyResults) -> dict[str, Any]:
    """Everything a report shows of a study, as JSON-ready data: the table, and the views of its
    kind (rank curves at matched task loss; or per line the forgetting matrix and the curves
    against stage)."""
    section: dict[str, Any] = {
        "name": results.name, "kind": results.kind, "base": results.base,
        "reference": results.reference, "k": results.k,
        "tasks": [asdict(task) for task in results.tasks],
        "base_scores": asdict(results.base_scores) if results.base_scores else None,
        "table": asdict(results_table(results)),
    }
    if results.kind == "sequence":
        section["forgetting_matrices"] = [
            {**asdict(matrix), "forgetting": matrix.forgetting()}
            for matrix in (forgetting_matrix(results, line) for line in results.lines)]
        section["intruders_vs_stage"] = {
            str(eps): [asdict(curve) for curve in intruders_vs_stage(results, eps)]
            for eps in TABLE_EPSILONS}
        section["reference_vs_stage"] = [asdict(curve) for curve in reference_vs_stage(results)]
    else:
        chosen = matched(results)
        section["matched_task_loss"] = chosen.target
        section["matched_members"] = [member.name for member in chosen.members]
        section["intruders_vs_rank"] = [asdict(curve) for curve in intruders_vs_rank(results)]
        section["forgetting_vs_rank"] = [asdict(curve) for curve in forgetting_vs_rank(results)]
        section["effective_rank_vs_rank"] = asdict(effective_rank_vs_rank(results))
    return section


def _final(results: StudyResults) -> list[MemberResult]:
    """The members a rank view compares: all of a study; a sequence's last stages."""
    if results.kind != "sequence":
        return list(results.members)
    return [results.line_members(line)[-1] for line in results.lines]


def _rank_order(member: MemberResult) -> tuple[float, float]:
    return (math.inf if member.rank is None else member.rank, member.lr)


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


# -- reading --------------------------------------------------------------------------------------


def read_results(path: str | Path) -> StudyResults:
    """results.json, every value checked; StudyResultsError naming the file otherwise."""
    path = Path(path)
    data = json_object(path, StudyResultsError, RESULTS_LIMIT)
    return parse_results(data, path)


def parse_results(data: dict[str, Any], path: Path) -> StudyResults:
    check = _Checker(path)
    if data.get("version") != VERSION:
        raise StudyResultsError(path, f"is not a study results file of version {VERSION}")
    tasks = [TaskInfo(check.text(t, "name"), check.text(t, "data"), check.text(t, "heldout"))
             for t in check.items(data, "tasks")]
    base_scores = None
    if data.get("base_scores") is not None:
        scores = check.table(data, "base_scores")
        base_scores = BaseScores(check.number(scores, "reference_loss"),
                                 [check.value_number(v, "base_scores.task_loss")
                                  for v in check.array(scores, "task_loss")])
    members = [_member(check, item, len(tasks)) for item in check.items(data, "members")]
    kind = check.text(data, "kind")
    if kind not in ("study", "sequence"):
        raise StudyResultsError(path, f"kind must be study or sequence, not {kind!r}")
    epsilons = [check.value_number(v, "epsilons") for v in check.array(data, "epsilons")]
    return StudyResults(
        name=check.text(data, "name"), kind=kind, base=check.text(data, "base"),
        reference=check.text(data, "reference"), k=check.integer(data, "k", 1),
        epsilons=epsilons, tasks=tasks, base_scores=base_scores, members=members,
        evaluation=check.text(data, "evaluation") if "evaluation" in data else "")


def _member(check: _Checker, item: dict[str, Any], task_count: int) -> MemberResult:
    task = check.integer(item, "task", 0)
    if task >= max(task_count, 1):
        raise StudyResultsError(check.path, f"member task {task} is not one of its {task_count} tasks")
    intruders = check.table(item, "intruders")
    counts = {}
    for key, value in intruders.items():
        try:
            float(key)
        except ValueError:
            raise StudyResultsError(check.path, f"intruders key {key!r} is not an ε") from None
        if not is_int(value) or value < 0:
            raise StudyResultsError(check.path, f"intruders at ε {key} must be a count")
        counts[key] = value
    task_loss = [None if v is None else check.value_number(v, "task_loss")
                 for v in check.array(item, "task_loss")]
    rank = item.get("rank")
    if rank is not None and (not is_int(rank) or rank < 1):
        raise StudyResultsError(check.path, "member rank must be a whole number or null")
    stage = item.get("stage")
    if stage is not None and (not is_int(stage) or stage < 1):
        raise StudyResultsError(check.path, "member stage must be a whole number or null")
    return MemberResult(
        name=check.text(item, "name"), line=check.text(item, "line"),
        method=check.text(item, "method"), rank=rank, lr=check.number(item, "lr"),
        task=task, stage=stage, state=check.text(item, "state"),
        message=check.text(item, "message"), steps=check.optional_integer(item, "steps"),
        task_loss=task_loss, reference_loss=check.optional_number(item, "reference_loss"),
        intruders=counts,
        median_effective_rank=check.optional_number(item, "median_effective_rank"),
        median_rel_norm=check.optional_number(item, "median_rel_norm"),
        matrices=check.integer(item, "matrices", 0), scan_errors=check.integer(item, "scan_errors", 0),
        model=None if item.get("model") is None else check.text(item, "model"))


@dataclass(frozen=True)
class _Checker:
    path: Path

    def fail(self, message: str) -> StudyResultsError:
        return StudyResultsError(self.path, message)

    def text(self, data: dict, key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str):
            raise self.fail(f"{key} must be a string")
        return value

    def number(self, data: dict, key: str) -> float:
        return self.value_number(data.get(key), key)

    def value_number(self, value: Any, key: str) -> float:
        if not is_number(value):
            raise self.fail(f"{key} must be a finite number")
        return float(value)

    def optional_number(self, data: dict, key: str) -> float | None:
        return None if data.get(key) is None else self.number(data, key)

    def integer(self, data: dict, key: str, minimum: int) -> int:
        value = data.get(key)
        if not is_int(value) or value < minimum:
            raise self.fail(f"{key} must be a whole number of at least {minimum}")
        return value

    def optional_integer(self, data: dict, key: str) -> int | None:
        return None if data.get(key) is None else self.integer(data, key, 0)

    def array(self, data: dict, key: str) -> list:
        value = data.get(key)
        if not isinstance(value, list):
            raise self.fail(f"{key} must be a list")
        return value

    def table(self, data: dict, key: str) -> dict:
        value = data.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{key} must be a table")
        return value

    def items(self, data: dict, key: str) -> list[dict]:
        values = self.array(data, key)
        if not all(isinstance(value, dict) for value in values):
            raise self.fail(f"every entry of {key} must be a table")
        return values
