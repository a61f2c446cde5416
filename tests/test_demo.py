"""`gradhealth demo`, the README's first command: it runs, and its report renders."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from browser import CHROMIUM, CONSOLE, chromium_log, pixels

pytestmark = pytest.mark.slow  # the demo trains two nets for 200 steps each (~15 s)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    script = Path(sys.executable).with_name("gradhealth")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gradhealth.cli"]
    proc = subprocess.run([*cmd, "demo", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    return proc, out


def test_demo_diagnoses_fixes_and_reports(demo):
    proc, out = demo
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "vanishing" in text and "healthy" in text
    found = re.search(r"sick ([0-9.]+)% \(chance 10%\), fixed ([0-9.]+)%", text)
    assert found, text[-2000:]
    sick, fixed = float(found.group(1)), float(found.group(2))
    assert sick < 30 and fixed >= 90, (sick, fixed)
    report = out / "report.html"
    assert f"report: {report.resolve()}" in text.replace("\n", "")
    assert report.stat().st_size > 50_000
    assert (out / "sick.db").exists() and (out / "fixed.db").exists()
    assert not list(out.glob("*.tmp"))


def test_demo_is_rerunnable_in_the_same_folder(demo):
    proc, out = demo
    again = subprocess.run([sys.executable, "-m", "gradhealth.cli", "demo", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it)")
def test_demo_report_renders_in_headless_chromium(demo, tmp_path):
    pytest.importorskip("PIL", reason="Pillow (a matplotlib dependency) checks the screenshot")
    _, out = demo
    shot = tmp_path / "demo.png"
    messages = CONSOLE.findall(chromium_log(out / "report.html", shot, tmp_path))
    assert messages == [], messages
    px = pixels(shot)
    non_white = (px.min(axis=2) < 245).mean()
    colours = len(np.unique(px.reshape(-1, 3), axis=0))
    assert non_white > 0.05 and colours > 500, (non_white, colours)


def test_bad_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "gradhealth.cli", "demo", "--out",
                           str(blocker / "sub")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "expected --out to name a folder" in proc.stdout + proc.stderr
