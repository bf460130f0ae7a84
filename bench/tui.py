"""TUI responsiveness: first paint, and key-press-to-screen latency while a scan runs.

    python bench/tui.py

First paint is timed from process start to the first frame in a real pseudo-terminal, against a
minimal Textual app measured the same way in the same run (the floor any Textual app pays).
Key latency is measured in-process from the key event entering the app (as the terminal driver
delivers it) to the first frame composed after the list's cursor moved, while the engine scans a
generated model in the background; the baseline is the same keys pressed after the scan has
finished. (Pilot's own wait-for-idle is not used: under load it waits on timers, not on the screen.)
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

MINIMAL_APP = """
from textual.app import App
from textual.widgets import Static
class Minimal(App):
    def compose(self):
        yield Static("filter by name")
Minimal().run()
"""


def first_paint(cmd: list[str], marker: bytes, env: dict, timeout: float = 30.0) -> float:
    """Seconds from spawn until `marker` is drawn on a 100×30 pseudo-terminal."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(env)
        os.execvp(cmd[0], cmd)
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    start, seen = time.perf_counter(), b""
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
                if marker in seen:
                    return time.perf_counter() - start
        raise RuntimeError(f"{cmd} never drew {marker!r}")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


async def key_latencies(app, keys: int, while_scanning: bool) -> list[float]:
    """Seconds from a key event reaching the app (as the terminal driver delivers it) to the first
    frame composed after the list's cursor moved: what a person waits for."""
    from textual import events

    from spectui.tui.widgets.matrix_list import MatrixTable

    times = []
    async with app.run_test(size=(100, 30)) as pilot:
        frames: list[float] = []
        display = app._display  # composes each frame (no public hook); a terminal driver then writes it

        def timed_display(screen, renderable):
            display(screen, renderable)
            if renderable is not None:
                frames.append(time.perf_counter())

        app._display = timed_display
        if not while_scanning:
            while not app.inspector.finished:
                await pilot.pause(0.1)
        else:
            while app.inspector.scan is None:  # the worker is importing torch
                await pilot.pause(0.05)
        table = app.screen.query_one(MatrixTable)
        busy = 0
        for i in range(keys):
            key = "down" if (i // 10) % 2 == 0 else "up"
            before, frames[:] = table.cursor_row, []
            busy += not app.inspector.finished
            start = time.perf_counter()
            app.post_message(events.Key(key, None))
            await until(lambda before=before: table.cursor_row != before)
            moved = time.perf_counter()
            await until(lambda moved=moved: any(t >= moved for t in frames))
            times.append(next(t for t in frames if t >= moved) - start)
            await asyncio.sleep(0.05)  # a person's key repeat, not a flood
        if while_scanning and busy < keys:
            print(f"note: {busy}/{keys} keys arrived while the scan ran")
    return times


async def until(condition, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the app never showed the key press")
        await asyncio.sleep(0.001)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    from scan import generated_pair

    from spectui.checkpoint.comparison import open_comparison
    from spectui.locations import samples_dir
    from spectui.tui.app import SpectuiApp
    from spectui.tui.inspector import Inspector

    env = {"SPECTUI_SAMPLES": str(samples_dir()), "XDG_CACHE_HOME": tempfile.mkdtemp(),
           "SPECTUI_RUNS_DIR": tempfile.mkdtemp()}
    minimal = [first_paint([sys.executable, "-c", MINIMAL_APP], b"filter by name", env) for _ in range(3)]
    spectui = [first_paint([sys.executable, "-m", "spectui"], b"filter by name", env) for _ in range(3)]
    paint = {"minimal_textual_s": min(minimal), "spectui_s": min(spectui)}
    print(f"first paint: spectui {paint['spectui_s']:.3f}s, minimal Textual app {paint['minimal_textual_s']:.3f}s "
          f"(ratio {paint['spectui_s'] / paint['minimal_textual_s']:.2f})")

    with tempfile.TemporaryDirectory() as tmp:
        base, lora, full = generated_pair(Path(tmp), layers=8, hidden=768)

        def app():
            return SpectuiApp(Inspector(open_comparison(str(base), [str(full)]), None, device="cpu"))

        busy = asyncio.run(key_latencies(app(), 80, while_scanning=True))
        idle = asyncio.run(key_latencies(app(), 80, while_scanning=False))
    latency = {name: {"p50_ms": 1000 * statistics.median(v), "p95_ms": 1000 * percentile(v, 95)}
               for name, v in (("while_scanning", busy), ("idle", idle))}
    for name, stats in latency.items():
        print(f"key → screen {name:15} p50 {stats['p50_ms']:6.1f} ms   p95 {stats['p95_ms']:6.1f} ms")
    print(f"p95 ratio scanning/idle: {latency['while_scanning']['p95_ms'] / latency['idle']['p95_ms']:.2f}")
    out = ROOT / "bench" / "results" / f"tui-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"first_paint": paint, "key_latency": latency}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
