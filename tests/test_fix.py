"""gh.fix: remedies chosen from the findings, applied, and proven by a clean re-probe."""

import pytest

from conftest import same_state, state_copy
from gradhealth import fix, fixes
from gradhealth.errors import ConfigError, FixIncompleteError, FixRefusedError, GradHealthError
from gradhealth.zoo import CASES, case

SICK = [c for c in CASES if not c.healthy and c.feedforward and "code-bug" not in c.tags]
HEALTHY = [c for c in CASES if c.healthy]


@pytest.mark.parametrize("c", SICK, ids=lambda c: c.name)
def test_every_sick_feedforward_net_is_cured(c):
    model, x, y = c.build()
    result = fix(model, x, y)
    assert not result.before.ok
    assert result.ok and result.after.findings == [], str(result)
    assert result.changes and result.rounds >= 1


@pytest.mark.parametrize("c", HEALTHY, ids=lambda c: c.name)
def test_healthy_nets_are_left_bit_identical(c):
    model, x, y = c.build()
    saved, structure = state_copy(model), repr(model)
    result = fix(model, x, y)
    assert result.ok and not result.changes and not result.plan
    assert same_state(model, saved) and repr(model) == structure


@pytest.mark.parametrize("name", ["rnn-vanishing", "rnn-exploding"])
def test_recurrent_nets_are_cured_by_recurrent_init(name):
    model, x, y = case(name).build()
    result = fix(model, x, y)
    assert result.ok and [a.remedy for a in result.plan] == ["orthogonal"]


def test_nonfinite_from_model_code_is_not_papered_over():
    model, x, y = case("nan-forward").build()
    saved = state_copy(model)
    with pytest.raises(FixRefusedError, match="no init/activation/norm change repairs it") as e:
        fix(model, x, y)
    assert "The model is unchanged" in str(e.value) and "nonfinite" in str(e.value)
    result = e.value.result
    assert not result.ok and not result.changes and result.before.findings
    assert same_state(model, saved)


def test_dry_run_plans_and_changes_nothing():
    model, x, y = case("relu-glorot-30").build()
    saved = state_copy(model)
    result = fix(model, x, y, dry_run=True)
    assert [a.remedy for a in result.plan] == ["he"] and not result.changes
    assert same_state(model, saved)


def test_init_only_never_changes_the_architecture():
    model, x, y = case("sigmoid-default-10").build()
    types = [type(m) for m in model.modules()]
    saved = state_copy(model)
    # init alone cannot heal a sigmoid net (sigmoid' <= 1/4): all or nothing, so the LSUV
    # round is rolled back and the error carries the attempt
    with pytest.raises(FixIncompleteError, match="bit-identical") as raised:
        fix(model, x, y, allow=("init",))
    assert [type(m) for m in model.modules()] == types and same_state(model, saved)
    result = raised.value.result
    assert result.changes and not result.after.ok
    assert all(a.category == "init" for a in result.plan)


def test_failed_remedy_rolls_everything_back(monkeypatch):
    model, x, y = case("sigmoid-default-10").build()
    saved, structure = state_copy(model), repr(model)

    def swap_then_fail(model, *args, **kwargs):
        fixes.swap_activations_.__wrapped__(model, *args, **kwargs)
        raise RuntimeError("disk full")

    swap_then_fail.__wrapped__ = None
    original = fixes.swap_activations_
    swap_then_fail.__wrapped__ = original
    monkeypatch.setattr(fixes, "swap_activations_", swap_then_fail)
    with pytest.raises(GradHealthError, match="rolled back"):
        fix(model, x, y)
    assert repr(model) == structure and same_state(model, saved)


def test_unknown_allow_is_refused():
    model, x, y = case("relu-he-30").build()
    with pytest.raises(ConfigError, match="init"):
        fix(model, x, y, allow=("architecture",))


def test_rendering_lists_plan_changes_and_reprobe():
    model, x, y = case("relu-glorot-30").build()
    text = str(fix(model, x, y))
    assert "before  vanishing in `0`" in text and "after   healthy" in text
    assert "He" in text and "re-probe after the fix" in text


def test_digits_acceptance_sigmoid_net_trains_after_fix():
    """Issue 4: 20-layer sigmoid MLP near chance after 200 SGD steps; >= 90% after gh.fix."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "fix_digits.py"
    spec = importlib.util.spec_from_file_location("fix_digits", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before, after, result = bench.run()
    assert before < 0.3, before
    assert after >= 0.9, after
    assert result.ok
