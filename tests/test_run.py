"""``gradhealth run SCRIPT.py``: the script runs as under python, and every model is watched."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gradhealth import load
from gradhealth.cli import main
from gradhealth.cli.status import StatusLine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MLP = EXAMPLES / "train_mlp.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def gradhealth(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradhealth", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_a_plain_script_runs_as_under_python_and_is_watched(tmp_path, capsys):
    argv, path = list(sys.argv), list(sys.path)
    code = main(["run", "--store", str(tmp_path / "run.db"), "--flush-every", "10", str(MLP),
                 "--steps", "60", "--print-every", "20"])
    out, err = capsys.readouterr()
    assert code == 0
    assert sys.argv == argv and sys.path == path
    assert out.splitlines()[:4] == ["training a 6-layer MLP for 60 steps", *(
        line for line in out.splitlines() if line.startswith("step "))][:4]
    assert "done: training accuracy" in out and "gradhealth" not in out  # stdout is the script's
    assert "gradhealth: Sequential" in err and "the script finished; steps: Sequential 60" in err
    run = load(tmp_path / "run.db")
    assert len(run.steps) == 60 and run.meta["outcome"] == "finished"
    assert run.meta["command"]["argv"] == [str(MLP), "--steps", "60", "--print-every", "20"]
    assert (run.steps.missing("loss") == 0).all()  # the backwarded loss, every step
    assert run.layers[:2] == ["0", "2"]


def test_a_script_that_raises_exits_1_with_its_own_traceback(tmp_path, capsys):
    code = main(["run", "--store", str(tmp_path / "run.db"), "--flush-every", "50", str(MLP),
                 "--steps", "100", "--fail-at", "30"])
    _, err = capsys.readouterr()
    assert code == 1
    tb = err[err.index("Traceback"):]
    assert "RuntimeError: failing at step 30 as asked (--fail-at)" in tb
    assert "train_mlp.py" in tb and "runpy" not in tb and "gradhealth" not in tb.split(
        "RuntimeError")[0]
    assert "the script raised RuntimeError: failing at step 30" in " ".join(err.split())
    run = load(tmp_path / "run.db")  # closed cleanly: the last window flushed
    assert len(run.steps) == 30 and run.meta["outcome"].startswith("raised RuntimeError")


def test_exit_status_and_argv_are_the_scripts(tmp_path, capsys):
    script = tmp_path / "exits.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        print("argv", sys.argv[1:], __name__, sys.path[0])
        m = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad(); m(torch.ones(4, 2)).sum().backward(); opt.step()
        sys.exit(int(sys.argv[1]))
    """))
    assert main(["run", "--quiet", "--store", str(tmp_path / "a.db"), str(script), "3",
                 "--x"]) == 3
    out, err = capsys.readouterr()
    assert f"argv ['3', '--x'] __main__ {tmp_path}" in out
    assert "exited with status 3" in err and "gradhealth: Linear" not in err  # --quiet
    assert load(tmp_path / "a.db").meta["outcome"] == "exited with status 3"
    assert main(["run", "--store", str(tmp_path / "b.db"), str(script), "0"]) == 0


def test_usage_errors_exit_2_before_the_script_runs(tmp_path, capsys):
    (tmp_path / "old.db").write_text("x")
    assert main(["run", "--store", str(tmp_path / "old.db"), str(MLP)]) == 2
    assert "a run never replaces a store" in " ".join(capsys.readouterr().out.split())
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    assert "not a file" in " ".join(capsys.readouterr().out.split())
    assert (tmp_path / "old.db").read_text() == "x"


def test_nothing_stepped_says_so(tmp_path, capsys):
    script = tmp_path / "idle.py"
    script.write_text("print('no training here')\n")
    assert main(["run", "--store", str(tmp_path / "run.db"), str(script)]) == 0
    assert "no optimizer step was seen" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run.db").exists()


def test_output_is_byte_identical_and_ctrl_c_closes_the_store(tmp_path):
    args = [str(MLP), "--steps", "40", "--print-every", "10"]
    plain = subprocess.run([sys.executable, *args], cwd=tmp_path, env=ENV, capture_output=True,
                           text=True, timeout=120)
    watched = gradhealth("run", "--store", "w.db", *args, cwd=tmp_path)
    assert plain.returncode == watched.returncode == 0
    assert watched.stdout == plain.stdout  # the script's output intact, ours on stderr
    assert "gradhealth run: the script finished" in watched.stderr
    assert "▸" not in watched.stderr  # no live status off a terminal: one final line

    # -X faulthandler: a run that does not end after Ctrl-C is made to print every
    # thread's stack (SIGABRT) into the failure, and is never left running for later tests.
    # SIGINT as a terminal delivers it: a test run started in the background by a shell
    # without job control inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt at all (that alone hung this test under `nohup sh -c '...' &`).
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "gradhealth", "run", "--store", "int.db",
         "--flush-every", "5", str(MLP), "--steps", "100000", "--print-every", "10",
         "--delay", "0.01"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("step 30:"):
                break
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"gradhealth run did not end within 120 s of Ctrl-C:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert "KeyboardInterrupt" in err and "the script interrupted (Ctrl-C)" in err
    run = load(tmp_path / "int.db")
    assert run.meta["outcome"] == "interrupted (Ctrl-C)" and len(run.steps) >= 30


def test_the_status_line_stays_below_the_scripts_output():
    term = io.StringIO()
    status = StatusLine(term)
    out = io.StringIO()
    status.update("gradhealth ▸ step 1")
    status.around(out, "epoch 1\n")
    status.around(out, "\r 10%|#   |")  # a progress bar redrawing its own line
    status.update("gradhealth ▸ step 2")
    status.around(out, "\r 20%|##  |")
    status.remove()
    assert out.getvalue() == "epoch 1\n\r 10%|#   |\r 20%|##  |"  # untouched
    screen = term.getvalue()
    # drawn on its own line, under the bar (which is left unfinished), erased before the bar
    # redraws and put back to the bar's end (10 columns)
    assert screen.startswith("\rgradhealth ▸ step 1\x1b[K\r\x1b[K")
    assert "\r\x1b[K\x1b[1A\x1b[10C" in screen and "\ngradhealth ▸ step 2\x1b[K" in screen
    assert screen.endswith("\r\x1b[K\x1b[1A\x1b[10C")


# -- frameworks and processes -----------------------------------------------------------------
@pytest.mark.slow
def test_a_lightning_script(tmp_path):
    pytest.importorskip("lightning.pytorch", reason="needs the lightning extra")
    done = gradhealth("run", "--store", "l.db", "--flush-every", "10",
                      str(EXAMPLES / "train_lightning.py"), "--steps", "30", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 30 steps" in done.stdout and "steps: Classifier 30" in done.stderr
    run = load(tmp_path / "l.db")
    assert len(run.steps) == 30 and run.meta["model"] == "Classifier"
    assert (run.steps.missing("loss") == 0).all() and run.layers[:2] == ["body.0", "body.2"]


@pytest.mark.slow
def test_a_hugging_face_trainer_script(tmp_path):
    pytest.importorskip("transformers", reason="needs the transformers extra")
    done = gradhealth("run", "--store", "hf.db", "--flush-every", "5",
                      str(EXAMPLES / "train_hf.py"), "--steps", "12", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 12 steps" in done.stdout
    run = load(tmp_path / "hf.db")
    assert len(run.steps) == 12 and run.meta["model"] == "BertForSequenceClassification"
    assert run.meta["optimizer"] == "AdamW" and (run.steps.missing("loss") == 0).all()


@pytest.mark.slow
def test_under_torchrun_every_rank_watches_and_rank_zero_writes(tmp_path):
    if not (torch_distributed_ok()):
        pytest.skip("torch.distributed with gloo is not available in this build")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "gradhealth", "run", "--store", "ddp.db", "--flush-every", "10",
           str(EXAMPLES / "train_ddp.py"), "--steps", "20"]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("done: 20 steps on 2 process(es)") == 1
    assert len(re.findall(r"gradhealth run: the script finished", done.stderr)) == 1
    run = load(tmp_path / "ddp.db")
    assert len(run.steps) == 20 and run.meta["processes"]["world"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["ddp.db"]
    assert time.monotonic() - start < 240


def torch_distributed_ok() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_gloo_available()
