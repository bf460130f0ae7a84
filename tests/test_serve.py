"""`spectui --serve`: the inspector in a browser through textual-serve."""

import socket
import subprocess
import sys
import time
import urllib.request

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
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
