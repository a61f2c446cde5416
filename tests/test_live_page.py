"""``gradhealth serve``: read-only, one run only, nothing from outside; and the live page in a
real browser (Playwright driving Debian's Chromium) while a training process writes."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from browser import CHROMIUM
from gradhealth import watch
from gradhealth.cli import main
from gradhealth.cli.serve import open_server
from gradhealth.report import live

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
EVIL = "<img src=x onerror=alert(1)>"


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module(EVIL, nn.Linear(4, 8))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(getattr(self, EVIL)(x)))


def write_run(path: Path, steps: int = 12) -> None:
    model = Named()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, store=path, flush_every=4, sample_every=4) as w:
        for i in range(steps):
            opt.zero_grad()
            x = torch.randn(8, 4)
            if i == 6:
                x[0, 0] = float("nan")
            loss = model(x).pow(2).mean()
            w.log_loss(loss)
            loss.backward()
            opt.step()


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "run.db"
    srv = open_server(path, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv, path
    srv.shutdown()
    srv.server_close()


def get(srv, path: str, method: str = "GET", host: str | None = None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    conn.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_serves_one_run_read_only(server):
    srv, path = server
    assert srv.server_address[0] == "127.0.0.1"
    status, _, body = get(srv, "/api/run")
    assert status == 200 and json.loads(body)["waiting"] is True  # no store yet
    write_run(path)
    before = path.read_bytes()
    status, headers, page = get(srv, "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    text = page.decode()
    assert not re.search(r"<script>|<style>|\son\w+=", text)  # no inline script or style
    urls = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert urls and all(u.startswith("/static/") or u == "data:," for u in urls)
    for name in live.STATIC:
        status, headers, body = get(srv, f"/static/{name}")
        assert status == 200 and headers["X-Content-Type-Options"] == "nosniff" and body
    status, _, body = get(srv, "/api/run")
    data = json.loads(body)
    assert data["live"] is False and data["outcome"] is None and data["stopped"] is True
    assert data["steps"]["step"] == list(range(12)) and data["last_step"] == 11
    assert data["steps"]["global_norm"][6] is None and data["steps"]["nonfinite"][6] == 1
    kinds = {(i["kind"], i["module"]) for i in data["incidents"]}
    assert ("nonfinite", "") in kinds
    assert data["heatmaps"] and EVIL in data["heatmaps"][0]["layers"]  # text, for textContent
    assert json.loads(get(srv, "/api/run?after=9")[2])["steps"]["step"] == [10, 11]
    assert get(srv, "/api/run?after=x")[0] == 400
    for bad in ("/static/../../etc/passwd", "/static/", "/run.db", "/%2e%2e/run.db",
                "/static/live.js/x", "//etc/passwd"):
        assert get(srv, bad)[0] == 404, bad
    assert get(srv, "/", method="POST")[0] == 501 and get(srv, "/", method="DELETE")[0] == 501
    assert get(srv, "/", host="evil.example:80")[0] == 421  # DNS rebinding
    assert path.read_bytes() == before


def test_serve_refuses_what_is_not_a_run_store(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a store")
    assert main(["serve", str(tmp_path / "notes.txt"), "--port", "0"]) == 2
    assert "not one" in " ".join(capsys.readouterr().out.split())


# -- a real browser -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it)")
def test_the_live_page_follows_a_training_run_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradhealth", "run", "--serve", "--port", "0", "--guard",
         "--store", "live.db", "--flush-every", "5", "--sample-every", "10",
         str(ROOT / "tests" / "live_script.py")],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        url = _wait(lambda: next((m.group(0) for m in map(
            re.compile(r"http://127\.0\.0\.1:\d+/").search, list(lines)) if m), None), 120)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            problems: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            shown = lambda: int(page.inner_text("#steps").replace(",", "") or 0)  # noqa: E731
            first = _wait(lambda: shown() or None, 60)
            _wait(lambda: shown() > first + 10 or None, 60)  # grows without a reload
            assert page.locator("#incidents [data-kind]").count() == 0
            (tmp_path / "go").write_text("")  # the next step's batch holds a NaN
            card = page.locator('#incidents [data-kind="nonfinite"]').first
            card.wait_for(timeout=60_000)
            nan_step = int((tmp_path / "nan_step").read_text())
            assert f"step {nan_step}" in card.inner_text()
            page.locator("#skipped td", has_text=str(nan_step)).first.wait_for(timeout=30_000)
            assert "live" in page.inner_text("#state")
            page.wait_for_selector("#heatmaps canvas", timeout=30_000)
            page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
            navigations = len([r for r in requests if r.rstrip("/") == url.rstrip("/")])
            (tmp_path / "stop").write_text("")
            _wait(lambda: "run ended: finished" in page.inner_text("#state") or None, 60)
            browser.close()
        assert problems == [], problems
        assert navigations == 1  # one page load: everything after it came by polling
        assert requests and all(r.startswith(url) for r in requests), requests
        assert (tmp_path / "live.png").stat().st_size > 20_000
        assert proc.wait(timeout=120) == 0
    finally:
        (tmp_path / "stop").write_text("")
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _wait(probe, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up after {seconds} s")
