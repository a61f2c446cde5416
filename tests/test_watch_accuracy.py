"""A quick subset of benchmarks/watch_accuracy.py: real small models trained through
gh.watch, healthy ones silent and sick ones reported as one incident of the right kind,
within the issue's latency (at most 4 sampled steps at sample_every=50)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
pytest.importorskip("sklearn")  # the digits

import watch_accuracy  # noqa: E402
from watch_scenarios import SCENARIOS  # noqa: E402

QUICK = ["mlp-momentum", "rnn-momentum-slow", "spike-kills-units", "lr-too-high-sgd",
         "sigmoid-stuck", "rnn-explodes", "amp-overflow"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", QUICK)
def test_scenario_verdict_at_the_default_sampling(name):
    r = watch_accuracy.judge(SCENARIOS[name], 0, 50)
    assert r.passed, (r.reported, r.why, r.truth)
    if r.scenario.expect:
        assert r.latency is not None and r.latency / 50 <= watch_accuracy.ACCEPT_MAX


def test_the_issue_run_reports_the_spike_and_the_units_it_killed():
    """The issue's run: a batch x25 with wrong labels at step 200 kills a ReLU layer."""
    incidents, ok, truth = watch_accuracy.train(SCENARIOS["spike-kills-units"], 0, 50)
    [one] = [i for i in incidents if i.severity != "info"]
    assert {"spike", "dead_units"} <= set(one.kinds) and one.onset == 200 and not ok
    assert one.reported["dead_units"] - truth.dead_onset()[0] <= 100  # two sampled steps
    assert "units died" in one.outcome
