"""Headless Chromium for tests: render a page, screenshot it, return its console log."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,2000", "--enable-logging=stderr", "--v=0"]
# With --enable-logging=stderr Chromium logs every console message of the page, errors,
# uncaught exceptions and Content-Security-Policy refusals included, as
# `INFO:CONSOLE:<line>] "..."` (older builds: `INFO:CONSOLE(<line>)]`). Our page has no
# script, so any console line at all is a failure. A control page that throws proves the
# detector still sees errors with this Chromium; if the format changes, the test fails
# loudly instead of passing blind.
CONSOLE = re.compile(r":CONSOLE[(:][^\n]*")


def chromium_log(page: Path, shot: Path, tmp: Path) -> str:
    proc = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--screenshot={shot}",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp)})
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    return proc.stderr


def pixels(shot: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(shot) as im:
        return np.asarray(im.convert("RGB"))




def chromium_dom(page: Path, tmp: Path) -> str:
    """The page's DOM as Chromium built it (``--dump-dom``)."""
    proc = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile'}", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp)})
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout
