"""Batched statistics equal their one-at-a-time definitions."""

import math

import pytest
import torch
from torch import nn

from gradhealth.measure import stats


def test_fan_in_variances_equal_fan_in_variance_for_every_grouping(monkeypatch):
    torch.manual_seed(0)
    weights = [nn.Linear(64, 32).weight, nn.Linear(64, 32).weight, nn.Conv2d(3, 8, 3).weight,
               nn.Linear(64, 32).weight.to(torch.bfloat16), nn.Linear(16, 4).weight,
               nn.Linear(64, 32).weight + 5.0]  # a mean far from 0: the moments still hold
    expected = [stats.fan_in_variance(w) for w in weights]
    for chunk in (1 << 24, 64 * 32 * 2, 1):  # all stacked; two per stack; one at a time
        monkeypatch.setattr(stats, "STACK_ENTRIES", chunk)
        got = stats.fan_in_variances([None, *weights])  # None (no weight) stays None
        assert got[0] is None
        for g, e in zip(got[1:], expected):
            assert g.shape == () and g.dtype == torch.float32
            assert g.item() == pytest.approx(e.item(), rel=1e-5)


def test_fan_in_variance_targets():
    torch.manual_seed(0)
    w = torch.empty(512, 512)
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert stats.fan_in_variances([w])[0].item() == pytest.approx(2.0, rel=0.02)


def test_quantile_rows_equal_torch_quantile_per_sample():
    torch.manual_seed(0)
    tensors = [torch.randn(10_000), torch.randn(3, 700) * 5, torch.rand(50), torch.randn(4096)]
    tensors[1][0, :10] = math.nan  # non-finite entries are dropped
    tensors[2][3] = math.inf
    samples = [stats.quantile_sample(t, 2048) for t in tensors]
    levels = torch.tensor(stats.QUANTILES)
    for t, s, row in zip(tensors, samples, stats.quantile_rows(samples)):
        finite = s[torch.isfinite(s)]
        torch.testing.assert_close(row, torch.quantile(finite, levels))
        assert s.numel() == min(t.numel(), 2048)
    assert stats.quantile_rows([torch.empty(0)]) == [None]
    assert torch.isnan(stats.quantiles(torch.empty(0))).all()
    assert torch.isnan(stats.quantiles(torch.full((8,), math.nan))).all()


def test_host_quantiles_equal_torch_nanquantile_on_many_rows():
    """The CPU path sorts with numpy (``_sorted_quantiles``): it must give torch's numbers,
    NaN rows, infinities and tiny or huge magnitudes included."""
    gen = torch.Generator().manual_seed(1)
    levels = torch.tensor(stats.QUANTILES)
    for trial in range(300):
        rows, n = 1 + trial % 4, 1 + int(torch.randint(1, 3000, (1,), generator=gen))
        x = torch.randn(rows, n, generator=gen) * 10.0 ** (trial % 61 - 30)
        if trial % 3 == 0:
            x[0, : trial % (n + 1)] = math.nan
        if trial % 5 == 0:
            x[-1, ::7] = math.inf
        if trial % 7 == 0:
            x[0] = -math.inf
        got = torch.from_numpy(stats._sorted_quantiles(x.numpy(), stats.QUANTILES))
        clean = torch.where(torch.isfinite(x), x, torch.full((), math.nan))
        want = torch.nanquantile(clean, levels, dim=1).t()
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_nonfinite_count_counts_nan_and_both_infinities_not_the_extremes(dtype):
    x = torch.randn(64, 33).to(dtype)
    x[0, :3] = math.nan
    x[5, 7], x[9, 9] = math.inf, -math.inf
    x[3, 3], x[4, 4] = torch.finfo(dtype).max, torch.finfo(dtype).min  # finite: not counted
    assert stats.nonfinite_count(x).item() == 5
    assert stats.nonfinite_count(x).item() == (~torch.isfinite(x)).sum().item()
    assert stats.nonfinite_count(torch.empty(0, dtype=dtype)).item() == 0
    assert stats.nonfinite_count(torch.tensor([1 + 1j, complex("nan")])).item() == 1


def test_layer_stats_replaced_equals_dataclasses_replace():
    """``LayerStats.replaced`` (the sampled step's judging) is ``dataclasses.replace``
    without ``__init__``: equal results, the original untouched, unknown names refused."""
    import dataclasses

    from gradhealth.measure.layer import LayerStats

    s = LayerStats(name="a", type="Linear", order=0, calls=1, leaf=True, n_params=3,
                   out_rms=1.5, saturation=0.2, inputs_from=("x",))
    for changes in ({}, {"saturation": 0.9}, {"dead_fraction": 0.5, "out_rms": None,
                                             "inputs_from": ("y", "z")}):
        got = s.replaced(**changes)
        assert got == dataclasses.replace(s, **changes) and type(got) is LayerStats
        assert got is not s and hash(got) == hash(dataclasses.replace(s, **changes))
    assert s.saturation == 0.2 and s.inputs_from == ("x",)
    with pytest.raises(TypeError, match="no_such"):
        s.replaced(no_such=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.replaced(out_rms=2.0).out_rms = 3.0  # type: ignore[misc]
