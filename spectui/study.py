"""The study's own process: `python -m spectui.study STUDY_DIR`.

It trains the study's members as runs (spectui.finetune.study: detached, resumable, one per GPU
when several are visible), and as each is done measures its model, into results.json
(spectui.study_results), rewritten after every member:

- the task metric: LM loss (nats per token) on each task's held-out examples (heldout/), as
  the runs evaluate it (their tokens, no end-of-sequence token added), every task seen so far
  for a sequence's stage; and the reference loss on pre-training-like text, the
  paper's measure of forgetting. Both by the forgetting probe (spectui.probe), with the base
  loaded once and each model's weights patched in.
- intruders against the original base at k for every ε of the sweep, and the medians of the
  effective rank and relative norm of ΔW: a scan by the engine, the base's decompositions shared
  through the cache. A sequence's LoRA stage is compared as its adapter merged into its starting
  model (written to the run's merged/), a full stage as it is.

Its status, pid and log are the study directory's (like a run's); SIGTERM or SIGINT cancels the
members it waits for and records `cancelled`. Running it again skips the members already done
and measured.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from spectui.defaults import DEFAULT_EPSILON, EPSILON_SWEEP
from spectui.errors import InputError, one_line, printable
from spectui.finetune.runs import Run, State
from spectui.finetune.study import Member, Study, StudySpec, train_members
from spectui.study_results import (
    VERSION,
    BaseScores,
    MemberResult,
    StudyResults,
    StudyResultsError,
    TaskInfo,
    read_results,
    write_results,
)

MEASURE = "v1"  # how members are measured: results measured otherwise are measured again


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m spectui.study STUDY_DIR", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: stop.set())
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the log is a file: no carriage-return bars
    transformers_logging.set_verbosity_error()
    return 0 if execute(Study(args[0]), stop) is State.DONE else 1


def execute(study: Study, stop: threading.Event, say: Callable[[str], None] | None = None) -> State:
    """Run the study and record how it ended in its status."""
    say = say or (lambda line: print(line, flush=True))
    study.set_status(State.RUNNING)
    try:
        state, message = run_study(study, stop, say)
    except InputError as error:
        state, message = State.FAILED, printable(str(error))
    except Exception as error:
        traceback.print_exc()
        state, message = State.FAILED, (f"unexpected {type(error).__name__}: {one_line(error)} "
                                        f"(traceback in {study.log_path})")
    study.set_status(state, message)
    say(f"{state.value}: {message}" if message else state.value)
    return state


def run_study(study: Study, stop: threading.Event,
              say: Callable[[str], None] = print) -> tuple[State, str]:
    """Train and measure every member; the study's state and message (failed when a member did
    not get done: the others' results are kept all the same)."""
    spec = study.spec()
    write_heldout(study, spec)
    evaluator = Evaluator(study, spec, say)
    results = _previous_results(study, spec, evaluator.fingerprint)
    write_results(study.results_path, results)
    if results.base_scores is None:
        results = replace(results, base_scores=evaluator.base_scores())
        write_results(study.results_path, results)

    def measure(member: Member, run: Run) -> None:
        nonlocal results
        known = results.member(member.name)
        if known is not None and known.evaluated and known.model and Path(known.model).exists():
            return
        results = results.with_member(evaluator.member(member, run))
        write_results(study.results_path, results)

    outcomes = train_members(study, measure, stop, say)
    for member in spec.members():
        outcome = outcomes.get(member.name)
        if outcome is not None and outcome.state is not State.DONE:
            results = results.with_member(_unmeasured(member, outcome.state.value, outcome.message))
    write_results(study.results_path, results)
    if stop.is_set():
        return State.CANCELLED, "stopped by a signal; run the study again to go on"
    failed = [(name, outcome) for name, outcome in outcomes.items() if outcome.state is not State.DONE]
    if failed:
        name, outcome = failed[0]
        first = (outcome.message.splitlines() or [""])[0]
        return State.FAILED, (f"{len(failed)} of {len(outcomes)} members not done, the others "
                              f"measured; {name} {outcome.state.value}" + (f": {first}" if first else ""))
    return State.DONE, ""


def write_heldout(study: Study, spec: StudySpec) -> None:
    """Each task's held-out examples, as its runs hold them out (the same seed and share, or the
    eval file): what the task metric is measured on."""
    from spectui.atomic import write_text
    from spectui.finetune.data import load_splits

    first_stage = {}
    for member in spec.members():
        first_stage.setdefault(member.task, member)
    for task, member in sorted(first_stage.items()):
        _, heldout = load_splits(member.spec)
        if not heldout:
            raise InputError(f"{member.spec.data}: no example is held out to measure the task on")
        write_text(study.heldout_path(task),
                   "".join(json.dumps({"text": example.text}) + "\n" for example in heldout))


class Evaluator:
    """The probe (base loaded once, reference and held-out texts tokenised once) and the scan
    cache, made when first needed."""

    def __init__(self, study: Study, spec: StudySpec, say: Callable[[str], None]):
        self.study, self.spec, self.say = study, spec, say
        self._probe = None
        self._task_ids: list[list[list[int]]] = []
        self._cache = None
        self.fingerprint = hashlib.sha256(json.dumps(
            [MEASURE, spec.base, spec.reference, spec.max_tokens, spec.k, spec.tasks,
             *(spec.run.get(key) for key in ("eval_file", "eval_fraction", "seed", "max_seq_len"))],
        ).encode()).hexdigest()[:16]

    @property
    def device(self) -> str:
        return "cpu" if self.spec.run.get("device") == "cpu" else "auto"

    def base_scores(self) -> BaseScores:
        reference, tasks = self._scores(None, range(len(self.spec.tasks)))
        self.say(f"base: reference loss {reference:.4f}, task loss "
                 + ", ".join(f"{loss:.4f}" for loss in tasks))
        return BaseScores(reference, tasks)

    def member(self, member: Member, run: Run) -> MemberResult:
        """Probe and scan a done member's model against the original base."""
        from spectui.checkpoint.comparison import open_comparison
        from spectui.finetune.merge import tuned_model

        model = tuned_model(run)
        comparison = open_comparison(self._base(), [str(model)])
        scan = self._scan(comparison)
        summary = scan.summary(0, self.spec.k, DEFAULT_EPSILON)
        seen = range(member.task + 1) if member.stage else range(member.task, member.task + 1)
        reference, tasks = self._scores(comparison.tuned[0].source, seen)
        task_loss: list[float | None] = [None] * (member.task + 1)
        for index, loss in zip(seen, tasks):
            task_loss[index] = loss
        rows = run.metrics()
        result = _unmeasured(member, State.DONE.value, "")
        result = replace(
            result, steps=rows[-1]["step"] if rows else None, task_loss=task_loss,
            reference_loss=reference, intruders=scan.epsilon_curve(0, self.spec.k, EPSILON_SWEEP),
            median_effective_rank=summary.median_effective_rank,
            median_rel_norm=summary.median_rel_norm, matrices=summary.scanned,
            scan_errors=len(scan.failures(0)), model=str(model))
        self.say(f"{member.name}: task loss {result.own_task_loss:.4f}, reference loss "
                 f"{reference:.4f}, intruders (k={self.spec.k}, ε=0.5) "
                 f"{result.intruders_at(DEFAULT_EPSILON)}")
        return result

    def _base(self) -> str:
        from spectui.checkpoint.files import locate

        return str(locate(self.spec.base))

    def _scan(self, comparison):
        from spectui.cache import Cache
        from spectui.engine import Scan
        from spectui.locations import cache_dir
        from spectui.results import ScanResults

        if self._cache is None:
            self._cache = Cache(cache_dir(), warn=lambda message: self.say(f"warning: {message}"))
        scan = Scan(comparison, self._cache, device=self.device).run()
        for failure in scan.errors.values():
            self.say(f"warning: {failure.message}")
        return ScanResults(comparison, scan.results, scan.errors)

    def _scores(self, source, tasks: range) -> tuple[float, list[float]]:
        """The reference loss and the loss on each given task's held-out examples."""
        probe = self._loaded_probe()
        reference, losses = None, []
        for task in tasks:
            probe.task = self._task_ids[task]  # the same model scores every task: one load
            ref_score, task_score = probe.score(source)
            reference = ref_score.loss if reference is None else reference
            losses.append(task_score.loss)
        return reference, losses

    def _loaded_probe(self):
        if self._probe is None:
            from spectui.engine import resolve_device
            from spectui.probe import Probe

            heldout = [self.study.heldout_path(task) for task in range(len(self.spec.tasks))]
            self._probe = Probe(Path(self._base()), Path(self.spec.reference or ""), heldout[0],
                                max_tokens=self.spec.max_tokens, device=resolve_device(self.device))
            self._task_ids = [self._as_trained(path) for path in heldout]
        return self._probe

    def _as_trained(self, path: Path) -> list[list[int]]:
        """A task's held-out examples tokenised as the runs train and evaluate them (truncated to
        max_seq_len, no end-of-sequence token added), the leading ones within max_tokens: so the
        task metric is a run's own evaluation loss, measured the same way for every model."""
        from spectui.finetune.batches import tokenize
        from spectui.finetune.data import load_examples
        from spectui.finetune.spec import RunSpec

        max_len = self.spec.run.get("max_seq_len", RunSpec.max_seq_len)
        features = tokenize(load_examples(path, "causal-lm"), self._probe.tokenizer, max_len)
        kept, used = [], 0
        for ids in (item.input_ids for item in features if len(item.input_ids) > 1):
            used += len(ids)
            if kept and used > self.spec.max_tokens:
                break
            kept.append(ids)
        return kept


def _unmeasured(member: Member, state: str, message: str) -> MemberResult:
    line = member.line
    return MemberResult(name=member.name, line=line.label, method=line.method, rank=line.rank,
                        lr=line.lr, task=member.task, stage=member.stage, state=state,
                        message=printable(message))


def _previous_results(study: Study, spec: StudySpec, fingerprint: str) -> StudyResults:
    """The results of an earlier run of the study, members measured with the same evaluation
    settings kept (the others, and members no longer in the spec, dropped); fresh ones else."""
    tasks = [TaskInfo(Path(data).stem, data, str(study.heldout_path(index)))
             for index, data in enumerate(spec.tasks)]
    fresh = StudyResults(
        name=spec.name or study.name, kind="sequence" if spec.is_sequence else "study",
        base=spec.base, reference=spec.reference or "", k=spec.k, epsilons=list(EPSILON_SWEEP),
        tasks=tasks, base_scores=None, evaluation=fingerprint,
        members=[_unmeasured(member, State.QUEUED.value, "") for member in spec.members()],
        version=VERSION)
    try:
        earlier = read_results(study.results_path) if study.results_path.exists() else None
    except StudyResultsError as error:  # measured again
        print(f"warning: results of an earlier run not kept: {error}", flush=True)
        earlier = None
    if earlier is None or earlier.evaluation != fingerprint:
        return fresh
    members = []
    for member in fresh.members:
        known = earlier.member(member.name)
        keep = known is not None and known.evaluated and (known.line, known.task) == (member.line, member.task)
        members.append(known if keep else member)
    return replace(fresh, base_scores=earlier.base_scores, members=members)


if __name__ == "__main__":
    raise SystemExit(main())
