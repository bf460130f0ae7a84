"""`spectui --serve`: the inspector in a browser through textual-serve."""

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp
import psutil
import pytest
from chromium import needs_chromium, page_terminal_text
from textual_serve.server import Server

from spectui.cli.serve import app_argv, is_loopback


@pytest.fixture
def served(monkeypatch):
    """Replace the web server's loop: record what it would serve instead."""
    calls = []
    monkeypatch.setattr(Server, "serve", lambda self, debug=False: calls.append(self))
    return calls


def test_browser_sessions_run_the_same_command_without_the_serve_options():
    argv = ["--serve", "base", "--port", "8001", "lora", "--k", "3", "--ser", "--host=0.0.0.0", "--eps", "0.4"]
    assert app_argv(argv) == ["base", "lora", "--k", "3", "--eps", "0.4"]


def test_loopback_by_default_with_ssh_instructions(cli, tiny, served):
    code, _, err = cli("--serve", tiny / "base", tiny / "lora", "--k", "3")
    assert code == 0
    (server,) = served
    assert (server.host, server.port) == ("127.0.0.1", 8000)
    assert server.command.endswith(f"-m spectui {tiny / 'base'} {tiny / 'lora'} --k 3")
    assert "ssh -L 8000:127.0.0.1:8000" in err and "warning" not in err


def test_a_public_address_is_warned_about(cli, tiny, served):
    code, _, err = cli("--serve", "--host", "0.0.0.0", "--port", "8123", tiny / "lora")
    assert code == 0
    assert (served[0].host, served[0].port) == ("0.0.0.0", 8123)
    assert "warning: 0.0.0.0 is not a loopback address" in err
    assert [is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "0.0.0.0", "example.org")] == \
           [True, True, True, False, False]


def test_bad_paths_fail_before_serving(cli, tmp_path, served):
    code, _, err = cli("--serve", tmp_path / "base", tmp_path / "lora")
    assert code == 2
    assert served == []
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such file" in lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


@needs_chromium
@pytest.mark.slow
def test_served_app_renders_in_chromium(tiny, tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "spectui", "--serve", "--port", str(port), str(tiny / "base"),
               str(tiny / "lora"), "--cache-dir", str(tmp_path / "cache")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, server)
        text = page_terminal_text(f"http://127.0.0.1:{port}/", wait_for="self_attn.q_proj",
                                  png=tmp_path / "served.png")
        assert "filter by name" in text and "layers.0.self_attn.q_proj" in text
        assert (tmp_path / "served.png").stat().st_size > 10_000
        # through `ssh -L 9000:127.0.0.1:PORT` the browser asks for localhost:9000: the page must say so
        forwarded = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": "localhost:9000"})
        with urllib.request.urlopen(forwarded, timeout=30) as page:
            assert 'data-session-websocket-url="ws://localhost:9000/ws"' in page.read().decode()
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert second.stderr.splitlines()[-1].startswith(f"spectui: error: --host 127.0.0.1 --port {port}: "
                                                         "cannot listen")
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the app processes it started (a browser session's app outlives its socket
    until the app has quit)."""
    apps = _apps(server)
    server.terminate()
    try:
        server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.communicate()
    for app in apps:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(app).kill()


def _apps(server: subprocess.Popen) -> set[int]:
    """The processes the server runs: one app (under a shell) per accepted websocket."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return {child.pid for child in psutil.Process(server.pid).children(recursive=True)}
    return set()


@pytest.fixture(scope="module")
def live(tiny, tmp_path_factory):
    """A real `spectui --serve` on a free loopback port, shared by the tests of who may connect."""
    port = _free_port()
    cache = tmp_path_factory.mktemp("live") / "cache"
    server = subprocess.Popen([sys.executable, "-m", "spectui", "--serve", "--port", str(port), str(tiny / "base"),
                               str(tiny / "lora"), "--cache-dir", str(cache)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, server)
        yield port, server
    finally:
        _stop(server)


async def _handshake(port: int, **headers: str) -> tuple[int, str]:
    """(status, body) of a websocket handshake with the served app: 101 when it is accepted. The client
    keeps a refusal's body to itself, so that comes from the same request again as a plain GET."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws", headers=headers):
                return 101, ""
        except aiohttp.WSServerHandshakeError as refused:
            async with session.get(f"http://127.0.0.1:{port}/ws", headers=headers) as again:
                return refused.status, await again.text()


async def _apps_started(server: subprocess.Popen, before: set[int], wait: float) -> set[int]:
    """The processes the server has started since `before` was taken, waiting up to `wait` s for one."""
    deadline = time.monotonic() + wait
    while not (new := _apps(server) - before) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return new


async def test_a_websocket_from_another_site_is_refused_before_any_app_starts(live):
    port, server = live
    before = _apps(server)
    status, body = await _handshake(port, Origin="http://evil.example")
    assert (status, body.strip()) == (403, f"Refused: the Origin http://evil.example is not a page served by "
                                           f"spectui at 127.0.0.1:{port}.")
    assert await _apps_started(server, before, wait=0.5) == set()


async def test_a_websocket_without_an_origin_is_refused(live):
    port, server = live
    before = _apps(server)
    assert (await _handshake(port))[0] == 403
    assert await _apps_started(server, before, wait=0.5) == set()


async def test_only_the_page_at_the_address_the_browser_used_may_connect(live):
    port, server = live
    # through `ssh -L 9000:127.0.0.1:PORT` the page is localhost:9000; another local site on port 3000 is not it
    assert (await _handshake(port, Host="localhost:9000", Origin="http://localhost:3000"))[0] == 403
    before = _apps(server)
    assert await _handshake(port, Host="localhost:9000", Origin="http://localhost:9000") == (101, "")
    assert await _handshake(port, Origin=f"http://127.0.0.1:{port}") == (101, "")
    assert await _apps_started(server, before, wait=10), "an accepted websocket starts an app"


async def test_a_foreign_host_name_is_refused_against_dns_rebinding(live):
    """evil.example re-resolved to 127.0.0.1: its page's requests carry its own name as Host and Origin."""
    port, server = live
    before = _apps(server)
    evil = f"evil.example:{port}"
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/",
                                                               headers={"Host": evil}) as page:
        assert (page.status, (await page.text()).strip()) == (
            403, f"Refused: this server does not answer to the Host {evil}.")
    assert (await _handshake(port, Host=evil, Origin=f"http://{evil}"))[0] == 403
    assert await _apps_started(server, before, wait=0.5) == set()
