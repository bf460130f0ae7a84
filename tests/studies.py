"""Study results as a study's process writes them (results.json), built by hand for the views and the
report: a rank study with a learning-rate grid (so ranks are matched on task loss) and a member that
failed, and a three-task sequence of a LoRA line and a full line."""

from __future__ import annotations

from pathlib import Path

from spectui.study_results import BaseScores, MemberResult, StudyResults, TaskInfo, write_results

EPSILONS = (0.1, 0.5, 0.6, 0.7, 0.8, 0.9)


def member(name: str, line: str, rank: int | None, lr: float, task_loss: list, reference: float,
           intruders: int, effective_rank: float, task: int = 0, stage: int | None = None) -> MemberResult:
    """A done, measured member: `intruders` at ε = 0.5, one more for each step of ε above it."""
    return MemberResult(
        name=name, line=line, method="full" if rank is None else "lora", rank=rank, lr=lr, task=task,
        stage=stage, state="done", steps=40, task_loss=task_loss, reference_loss=reference,
        intruders={str(eps): max(0, intruders + round((eps - 0.5) * 10)) for eps in EPSILONS},
        median_effective_rank=effective_rank, median_rel_norm=0.05, matrices=28, model=f"/runs/{name}/output")


def rank_study() -> StudyResults:
    return StudyResults(
        name="ranks", kind="study", base="/models/base", reference="/data/reference.txt", k=10,
        epsilons=list(EPSILONS), tasks=[TaskInfo("task", "/data/task.jsonl", "/study/heldout/task1.jsonl")],
        base_scores=BaseScores(3.2, [5.0]), members=[
            member("ranks-r1-lr0.001", "r1-lr0.001", 1, 1e-3, [2.9], 3.6, 14, 1.0),
            member("ranks-r1-lr0.01", "r1-lr0.01", 1, 1e-2, [2.1], 4.4, 19, 1.1),
            member("ranks-r8-lr0.001", "r8-lr0.001", 8, 1e-3, [2.2], 3.5, 6, 5.9),
            member("ranks-full", "full", None, 2e-5, [2.15], 3.3, 0, 48.0),
            MemberResult(name="ranks-r8-lr0.01", line="r8-lr0.01", method="lora", rank=8, lr=1e-2, task=0,
                         stage=None, state="failed", message="the loss became nan at step 12"),
        ])


def sequence() -> StudyResults:
    tasks = [TaskInfo(f"seq_task{i}", f"/data/seq_task{i}.jsonl", f"/study/heldout/task{i}.jsonl")
             for i in (1, 2, 3)]
    members = []
    for line, rank, lr, drift, intruders in (("r2", 2, 1e-3, 0.5, 9), ("full", None, 2e-5, 0.2, 1)):
        for stage in (1, 2, 3):
            losses = [2.0 + drift * (stage - 1 - task) if task < stage else None for task in range(3)]
            name = f"seq-{line}-stage{stage}"
            members.append(member(name, line, rank, lr, losses, 3.2 + drift * stage, intruders * stage,
                                  2.0 if rank else 40.0, task=stage - 1, stage=stage))
    return StudyResults(name="seq", kind="sequence", base="/models/base", reference="/data/reference.txt",
                        k=10, epsilons=list(EPSILONS), tasks=tasks, base_scores=BaseScores(3.2, [5.0, 5.5, 6.0]),
                        members=members)


def written(directory: Path, results: StudyResults) -> Path:
    """The results in a study directory's results.json."""
    directory.mkdir(parents=True, exist_ok=True)
    write_results(directory / "results.json", results)
    return directory / "results.json"
