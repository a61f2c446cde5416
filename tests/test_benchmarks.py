"""The timing benchmarks run end to end at toy sizes (their numbers are not checked here:
timings belong in the benchmarks' own output, never in a test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def run(script: str, *args: str) -> str:
    done = launch(script, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_overhead_prints_every_configuration_as_a_ratio_and_a_verdict():
    out = run("overhead.py", "--models", "mlp", "--mlp-width", "32", "--mlp-batch", "4",
              "--rounds", "2", "--warmup", "0", "--threads", "1")
    for config in ("none", "watch", "item", "fused", "guard", "run"):
        assert re.search(rf"^{config}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+%$", out, re.M), out
    for config in ("watch", "run"):
        assert re.search(rf"^mlp: {config} [\d.]+x none, [\d.]+x fused -> (PASS|FAIL)", out,
                         re.M), out


@pytest.mark.slow
def test_overhead_under_torch_compile():
    out = run("overhead.py", "--models", "mlp", "--mlp-width", "32", "--mlp-batch", "4",
              "--rounds", "1", "--warmup", "1", "--threads", "1", "--compile",
              "--configs", "none,watch")
    assert "torch.compile" in out and re.search(r"^watch\s+[\d.]+\s+[\d.]+", out, re.M), out


def test_step_profile_splits_steps_by_kind_and_profiles_a_sampled_one():
    out = run("step_profile.py", "--models", "mlp", "--mlp-width", "32", "--mlp-batch", "4",
              "--steps", "50", "--why")
    for config in ("none", "watch"):
        for kind in ("ordinary", "sampled", "after", "flush"):
            assert re.search(rf"^{config}\s+{kind}\s+\d+\s+[\d.]+\s+[\d.]+", out, re.M), out
    assert "Python functions by own time" in out and "ATen ops by host time" in out
    # the sampled step's own work shows (which of its files leads depends on the load)
    assert re.search(r"gradhealth/(measure|training)/\w+\.py", out), out


def test_sampled_ops_counts_more_kernels_on_a_sampled_step():
    out = run("sampled_ops.py", "--gpt-config", "tiny")
    counts = {m[1]: (int(m[2]), int(m[3]))
              for m in re.finditer(r"^(plain|sampled|flush)\s+(\d+)\s+(\d+)$", out, re.M)}
    assert set(counts) == {"plain", "sampled", "flush"}, out
    assert counts["sampled"][1] > counts["plain"][1] > 0


def test_sync_sites_says_it_needs_cuda_without_one():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/test_cuda.py covers it")
    done = launch("sync_sites.py")
    assert done.returncode != 0 and "needs a CUDA device" in done.stderr


def test_probe_cost_over_the_real_zoo_prints_ratios():
    pytest.importorskip("transformers", reason="needs the test extra")
    out = run("probe_cost_real.py", "--repeats", "1", "encoder-pre-ln", "lstm-lm")
    assert re.search(r"^encoder-pre-ln\s+probe / step\s+[\d.]+x$", out, re.M), out
    assert re.search(r"^median [\d.]+x\s+worst [\d.]+x \((encoder-pre-ln|lstm-lm)\)", out,
                     re.M), out
