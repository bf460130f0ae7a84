"""The parent of an `accelerate launch`: records how the launch ended where its training processes
could not.

A launch that fails before training starts (a bad accelerate config, say) would leave the run
queued with no process, which reads "interrupted" and invites a resume that fails the same way.
When one rank fails, the launcher stops the others, so the first rank records "cancelled". This
process sees the launcher's exit status, and a real cancel (SIGTERM to the run's process group)
reaches it too, which is how it tells the cases apart.

    python -m spectui.finetune.supervisor RUN_DIR COMMAND...
"""

from __future__ import annotations

import signal
import subprocess
import sys

from spectui.finetune.runs import LIVE, Run, State


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m spectui.finetune.supervisor RUN_DIR COMMAND...", file=sys.stderr)
        return 2
    run, command = Run(args[0]), args[1:]
    stopped_by: list[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT):  # a handler, not SIG_IGN: the launcher must not inherit it
        signal.signal(signum, lambda number, _frame: stopped_by.append(signal.Signals(number).name))
    code = subprocess.call(command)
    record_outcome(run, code, stopped_by[0] if stopped_by else None)
    return code if code >= 0 else 128 - code  # the shell's way of saying "killed by a signal"


def record_outcome(run: Run, code: int, stopped_by: str | None) -> None:
    """Set the run's final state unless its training process already recorded a true one."""
    state = run.status().state
    if state in (State.DONE, State.FAILED):
        return
    if stopped_by:
        if state in LIVE:
            run.set_status(State.CANCELLED, f"stopped by {stopped_by}")
        return
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    message = f"accelerate launch {how} before training finished"
    run.set_status(State.FAILED, message)
    print(f"{State.FAILED.value}: {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
