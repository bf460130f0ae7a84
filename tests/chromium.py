"""Headless Chromium (Debian's `chromium`, installed by .ci/run) for the browser tests.

On a closed network Chromium hangs on its background services unless they are switched off, hence the
flags; every run gets a fresh profile. The served app draws on a canvas, so its text is read from the
websocket frames the page receives, through the DevTools protocol (aiohttp comes with textual-serve).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (see .ci/run)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
ANSI = re.compile(r"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def run_chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="spectui-chromium-", ignore_cleanup_errors=True) as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=True)


def dump_dom(url: str) -> str:
    return run_chromium("--dump-dom", url).stdout


def screenshot(url: str, png: Path, width: int = 1200, height: int = 3000) -> Path:
    run_chromium(f"--screenshot={png}", f"--window-size={width},{height}", url)
    return png


def page_terminal_text(url: str, wait_for: str, timeout: float = 60, png: Path | None = None) -> str:
    """Load `url` and return the terminal output its websockets received (escape codes removed), once it
    contains `wait_for` or after `timeout` seconds; with `png`, also a screenshot of the page then."""
    # Chromium's helper processes may still write to the profile while it is removed: ignore that.
    with tempfile.TemporaryDirectory(prefix="spectui-chromium-", ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    "--window-size=1280,800", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(Path(profile) / "DevToolsActivePort", browser, timeout=30)
            return asyncio.run(_terminal_text(port, url, wait_for, timeout, png))
        finally:
            os.killpg(browser.pid, signal.SIGTERM)  # the browser and its helper processes
            browser.wait(timeout=10)


def _devtools_port(port_file: Path, browser: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and browser.poll() is None:
        if port_file.exists() and (lines := port_file.read_text().splitlines()):
            return int(lines[0])
        time.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")


async def _terminal_text(port: int, url: str, wait_for: str, timeout: float, png: Path | None) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as cdp:
            ids = iter(range(1, 1_000_000))

            async def send(method: str, **params) -> int:
                message_id = next(ids)
                await cdp.send_json({"id": message_id, "method": method, "params": params})
                return message_id

            await send("Network.enable")
            await send("Page.navigate", url=url)
            raw = text = ""
            deadline = time.monotonic() + timeout
            while wait_for not in text and time.monotonic() < deadline:
                try:
                    message = await cdp.receive_json(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if message.get("method") == "Network.webSocketFrameReceived":
                    frame = message["params"]["response"]
                    data = frame["payloadData"]
                    raw += base64.b64decode(data).decode("utf-8", "replace") if frame["opcode"] == 2 else data
                    text = ANSI.sub("", raw)
            if png is not None:
                shot_id = await send("Page.captureScreenshot", format="png")
                while (message := await cdp.receive_json(timeout=30)).get("id") != shot_id:
                    pass
                png.write_bytes(base64.b64decode(message["result"]["data"]))
            return text
