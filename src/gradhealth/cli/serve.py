"""``gradhealth serve RUN.db``: the live page of one run store, served read-only.

The standard library's ``ThreadingHTTPServer``, bound to 127.0.0.1 by default. It
answers GET and HEAD for four kinds of path, matched exactly (no part of a request ever
reaches the file system): ``/`` (the page), ``/static/<name>`` for the names in
``report.live.STATIC`` (read from the package), ``/api/run?after=STEP`` (JSON, read from
the one store through ``gradhealth.store.reader``), and nothing else (404). Every answer
carries the page's Content-Security-Policy (nothing outside this server) and a request
whose ``Host`` is not this server's is refused (a web page elsewhere cannot read it
through DNS rebinding). A store that does not exist yet is waited for.

``spawn`` starts the same server in a child process for ``gradhealth run --serve``: the
training process never spends a cycle on the page, and the child ends ``GRACE_S`` seconds
after the run (the open pages show how it ended), or with its parent, however that ends
(its stdin closes).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rich.console import Console

from gradhealth.errors import ConfigError, StoreError
from gradhealth.report import live
from gradhealth.store.format import is_run_store

SPAWN_TIMEOUT_S = 30.0
GRACE_S = 2.5  # a spawned server outlives its run this long: pages poll every second


class LiveServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, path: Path, host: str, port: int):
        super().__init__((host, port), Handler)
        self.run = live.LiveRun(path)
        self.page = live.page(path).encode("utf-8")
        self.files = {name: live.static(name) for name in live.STATIC}
        bound = self.server_address[1]
        self.hosts = {f"{h}:{bound}" for h in (host, "127.0.0.1", "localhost", "[::1]")}
        self.any_host = host in ("0.0.0.0", "::", "")

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    server: LiveServer
    server_version = "gradhealth"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log: the terminal belongs to the training

    def _answer(self, body: bool) -> None:
        host = self.headers.get("Host")
        if host is not None and not self.server.any_host and host not in self.server.hosts:
            return self._send(HTTPStatus.MISDIRECTED_REQUEST, b"not this server\n",
                              "text/plain", body)
        url = urlsplit(self.path)
        if url.path == "/":
            return self._send(HTTPStatus.OK, self.server.page, "text/html", body)
        name = url.path.removeprefix("/static/")
        if url.path.startswith("/static/") and name in live.STATIC:
            return self._send(HTTPStatus.OK, self.server.files[name], live.STATIC[name], body)
        if url.path == "/api/run":
            after = parse_qs(url.query).get("after", [None])[-1]
            try:
                step = int(after) if after is not None else None
            except ValueError:
                return self._send(HTTPStatus.BAD_REQUEST, b"after= expects a step number\n",
                                  "text/plain", body)
            try:
                data = self.server.run.payload(step)
            except StoreError as err:
                data = {"waiting": False, "live": False, "error": str(err)}
            text = json.dumps(data, allow_nan=False, separators=(",", ":"))
            return self._send(HTTPStatus.OK, text.encode("utf-8"), "application/json", body)
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", body)

    def _send(self, status: HTTPStatus, data: bytes, kind: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", live.CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)


def open_server(path: Path, host: str, port: int) -> LiveServer:
    if path.exists() and (not path.is_file() or (path.stat().st_size and not is_run_store(path))):
        raise ConfigError(f"expected a run store written by gradhealth (gh.watch, gradhealth "
                          f"run), got {path}, which is not one; give the path of a RUN.db")
    try:
        return LiveServer(path, host, port)
    except OSError as err:
        raise ConfigError(f"cannot serve on {host}:{port}: {err.strerror or err}; pass "
                          f"--port with another number (--port 0: any free one)") from err


def serve_command(args: argparse.Namespace, console: Console) -> int:
    path = Path(args.run)
    server = open_server(path, args.host, args.port)
    waiting = "" if path.exists() else " (it does not exist yet: the page waits for it)"
    print(f"gradhealth serve: {path} at {server.url}{waiting}; read-only, Ctrl-C to stop",
          flush=True)
    if args.exit_with_stdin:  # spawned by gradhealth run: end with the parent
        threading.Thread(target=_end_at_eof, args=(server,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _end_at_eof(server: LiveServer) -> None:
    try:
        sys.stdin.buffer.read()
    finally:
        server.shutdown()


class Spawned:
    """A ``gradhealth serve`` child process; ``stop`` ends it."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def stop(self, grace: float = 0.0) -> None:
        """End the child, after ``grace`` seconds (open pages poll once more: they show how
        the run ended)."""
        if grace > 0 and self.proc.poll() is None:
            time.sleep(grace)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def spawn(path: Path, *, host: str, port: int) -> tuple[Spawned, str]:
    """Start ``gradhealth serve`` on ``path`` in a child process; (it, the page's URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradhealth", "serve", str(path), "--host", host, "--port",
         str(port), "--exit-with-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    child = Spawned(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SPAWN_TIMEOUT_S)
    first = proc.stdout.readline().decode("utf-8", "replace") if ready else ""
    url = next((w.rstrip(";,") for w in first.split() if w.startswith("http://")), None)
    if url is None:
        child.stop()
        raise ConfigError(f"gradhealth serve did not start (it said {first.strip()!r}); "
                          f"run it alone to see why: gradhealth serve {path} --port {port}")
    return child, url
