"""Bad input: a clipper's options out of their domain, and bad command lines.

Every bad command line exits 2 with one paragraph saying what was expected, no traceback,
and writes nothing: not in the working folder, not next to its inputs.
"""

from __future__ import annotations

import math

import pytest

from gradhealth.clip import AGC, AutoClip, ClipNorm, ClipNormPerParameter, ClipValue, ZClip
from gradhealth.errors import ConfigError

BAD_THRESHOLDS = (0, 0.0, -1, -1e-9, math.nan, math.inf, -math.inf, True, "1", None)


THRESHOLDS = {"ClipValue": ClipValue, "ClipNorm": ClipNorm,
              "ClipNormPerParameter": ClipNormPerParameter, "AGC": AGC,
              "AGC.eps": lambda v: AGC(0.01, eps=v), "ZClip.z_thresh": lambda v: ZClip(z_thresh=v),
              "ZClip.eps": lambda v: ZClip(eps=v)}


@pytest.mark.parametrize("make", THRESHOLDS.values(), ids=THRESHOLDS.keys())
@pytest.mark.parametrize("value", BAD_THRESHOLDS, ids=repr)
def test_a_clipper_refuses_a_threshold_that_is_not_a_positive_number(make, value):
    with pytest.raises(ConfigError, match="(?i)expected .* got"):
        make(value)


def test_clipper_counts_and_percentiles_are_checked():
    assert ClipNorm(1.0, norm_type=math.inf).norm_type == math.inf  # the max-norm is fine
    for norm_type in (0, -1, math.nan, -math.inf, True, "2"):
        with pytest.raises(ConfigError, match="norm_type"):
            ClipNorm(1.0, norm_type=norm_type)
    for bad in (0, -5, math.nan, 100.5, math.inf, True, "50"):
        with pytest.raises(ConfigError, match="percentile"):
            AutoClip(bad)
    for history in (0, 1.5, math.nan, True, "3"):
        with pytest.raises(ConfigError, match="history"):
            AutoClip(history=history)
    for warmup in (0, 1.5, math.nan, -3, True):
        with pytest.raises(ConfigError, match="warmup_steps"):
            ZClip(warmup_steps=warmup)
    for alpha in (0, 1, math.nan, -0.5, "0.9"):
        with pytest.raises(ConfigError, match="alpha"):
            ZClip(alpha=alpha)
    AutoClip(100.0, history=3)
    ZClip(alpha=0.9, z_thresh=3, warmup_steps=2, eps=1e-8)
