"""`spectui --serve`: the inspector in a browser, through textual-serve.

Each browser tab gets its own `spectui` process with the same paths and options (minus the serve
options); they share the scan cache. textual-serve has no authentication, so the server binds to
loopback unless told otherwise, and the way in from another machine is an SSH port forward. Nor does
it check who connects: any web page the user visits could open its websocket and drive the app, so
a guard refuses websockets from pages spectui did not serve and Host names it is not reachable under.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import sys
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def _port(value: str) -> int:
    port = int(value) if value.isascii() and value.isdigit() and len(value) <= 5 else 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"'{value[:40]}' is not a port (1 to 65535)")
    return port


def serve_options() -> argparse.ArgumentParser:
    opts = argparse.ArgumentParser(add_help=False)
    group = opts.add_argument_group("in a browser")
    group.add_argument("--serve", action="store_true", help="serve the app over HTTP instead of the terminal")
    group.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind with --serve ({DEFAULT_HOST})")
    group.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port with --serve ({DEFAULT_PORT})")
    return opts


def app_argv(argv: list[str]) -> list[str]:
    """The command line without the serve options: what each browser session runs. The parser only knows
    the serve options, so it strips them (abbreviated or not) and keeps everything else in order."""
    _, rest = serve_options().parse_known_args(argv)
    return rest


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args) -> int:
    from spectui.cli.options import open_from_args
    from spectui.errors import UsageError

    argv = args.argv
    open_from_args(args)  # bad paths fail here, in one line, not later in every browser tab
    from textual_serve.server import Server

    class ReachableServer(Server):
        """textual-serve puts its own address into the page's script and websocket URLs, which is wrong
        behind a port forward to another local port and for 0.0.0.0; use the address the browser used."""

        async def handle_index(self, request):
            self.public_url = f"{request.scheme}://{request.host}"  # no await before the handler reads it
            return await super().handle_index(request)

        async def _make_app(self):
            """Every route (page, websocket, downloads, statics) behind the guard: textual-serve has none."""
            app = await super()._make_app()
            app.middlewares.append(same_site_only(self.host))
            return app

    command = shlex.join([sys.executable, "-m", "spectui", *app_argv(argv)])
    try:
        _check_listen(args.host, args.port)  # before the banner: a failure is one line, not three
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen ({reason})") from err
    print(_instructions(args.host, args.port), file=sys.stderr)
    _quiet_request_errors()
    ReachableServer(command, host=args.host, port=args.port, title="spectui").serve()
    return 0


def _check_listen(host: str, port: int) -> None:
    """Bind the address once and let it go: an address in use or unknown is said up front."""
    import socket

    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
        return


def _quiet_request_errors() -> None:
    """Anyone who reaches the port can send garbage; aiohttp would print a traceback per request on
    this terminal. One line each instead."""
    import logging

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            reason = f": {record.exc_info[1]}" if record.exc_info and record.exc_info[1] else ""
            return f"spectui: serve: {record.getMessage()}{reason}"[:300]

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False


def same_site_only(bound_host: str):
    """aiohttp middleware that answers 403, before any handler (so before any app process starts),
    to whatever `refusal` refuses."""
    from aiohttp import web

    @web.middleware
    async def guard(request, handler):
        websocket = request.match_info.route.name == "websocket"
        reason = refusal(request.headers.get("Host"), request.headers.get("Origin"), websocket, bound_host)
        if reason:
            raise web.HTTPForbidden(text=reason)
        return await handler(request)

    return guard


def refusal(host: str | None, origin: str | None, websocket: bool, bound_host: str) -> str | None:
    """Why a request is refused, or None. Browsers let any page open a websocket anywhere and send its
    origin along, so only the page served here (Origin == Host) may drive the app; and a loopback
    server answers only to loopback names, since another name reaching it is DNS rebinding."""
    if not _reachable_as(host, bound_host):
        return f"Refused: this server does not answer to the Host {host or '(none)'}.\n"
    if websocket and not _same_origin(origin, host):
        return f"Refused: the Origin {origin or '(none)'} is not a page served by spectui at {host}.\n"
    return None


def _reachable_as(host: str | None, bound_host: str) -> bool:
    """Whether `host` (a Host header) may name this server: any name when it is bound to a public address,
    only a loopback one when bound to loopback. The port is free: behind an SSH forward it is the
    forwarded one, and a rebinding page's host name is its own whatever the port."""
    name = _host_name(host or "")
    return name is not None and (is_loopback(name) or not is_loopback(bound_host))


def _same_origin(origin: str | None, host: str) -> bool:
    """Whether the page that opened the websocket came from this address (as the browser spelled it)."""
    parts = urlsplit(origin or "")
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def _host_name(netloc: str) -> str | None:
    """The host of `name[:port]` or `[v6][:port]`, lower case and unbracketed; None unless that is all
    `netloc` is (no user, path or bad port)."""
    try:
        parts = urlsplit(f"//{netloc}")
        _ = parts.port  # raises on a port that is not one
    except ValueError:
        return None
    if not netloc or parts.netloc != netloc or parts.username is not None:
        return None
    return parts.hostname


def _instructions(host: str, port: int) -> str:
    url_host = f"[{host}]" if ":" in host else host
    lines = [f"spectui: serving on http://{url_host}:{port} (Ctrl+C stops it)"]
    if is_loopback(host):
        lines.append(f"spectui: from another machine: ssh -L {port}:{url_host}:{port} THIS_HOST, "
                     f"then open http://127.0.0.1:{port}")
    else:
        lines.append(f"spectui: warning: {host} is not a loopback address and there is no login: anyone who "
                     f"can reach port {port} can use the app and read what it opens; prefer the default "
                     f"--host {DEFAULT_HOST} and an SSH forward (ssh -L {port}:127.0.0.1:{port} THIS_HOST)")
    return "\n".join(lines)
