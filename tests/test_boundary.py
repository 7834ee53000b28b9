"""sweeps.boundary: the group-sequential correction of repeated looks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sweeps import boundary

# the group-sequential boundary


def test_one_look_leaves_p_alone():
    assert boundary.sequential_p(0.031, 1, (5,)) == 0.031
    assert boundary.nominal_level(0.05, 1, (5,)) == 0.05


@pytest.mark.parametrize("k, pocock", [(2, 0.0294), (3, 0.0221), (5, 0.0158)])
def test_equal_looks_reproduce_pococks_published_levels(k, pocock):
    # Pocock (1977), two-sided 0.05 over k equally spaced looks of a normal statistic
    looks = tuple(range(2, 2 * k + 1, 2))
    assert boundary.nominal_level(0.05, 1, looks, statistic="z") == pytest.approx(pocock, abs=4e-4)
    assert boundary.nominal_level(0.05, k, looks, statistic="z") == pytest.approx(pocock, abs=4e-4)


@pytest.mark.parametrize("looks", [(3, 4, 5), (2, 3, 4)])
def test_the_t_boundary_keeps_five_percent_where_the_z_boundary_spends_more(looks):
    # independent of the boundary's own paths: other draws, scipy's t test at every look, the real correction
    rng = np.random.default_rng(123)
    x = rng.standard_normal((20_000, looks[-1]))
    p = np.stack([scipy_stats.ttest_1samp(x[:, :n], 0.0, axis=1).pvalue for n in looks], axis=1)

    def level(statistic: str) -> float:
        corrected = [
            [
                boundary.sequential_p(float(p[i, j]), j + 1, looks, shape=0.0, statistic=statistic)
                for j in range(len(looks))
            ]
            for i in range(len(p))
        ]
        return float((np.min(corrected, axis=1) <= 0.05).mean())

    assert level("t") == pytest.approx(0.05, abs=0.0045)  # 3 standard errors of 20,000 paths
    assert level("z") > 0.055  # the measurement: 5.6-5.7%


def test_an_unknown_statistic_is_refused():
    with pytest.raises(ValueError, match="statistic"):
        boundary.sequential_p(0.01, 1, (3, 4), statistic="chi2")


def test_sequential_p_inverts_the_nominal_level():
    looks = (3, 4, 5, 6)
    for look in (1, 3):
        level = boundary.nominal_level(0.05, look, looks)
        assert (
            boundary.sequential_p(level * 0.98, look, looks) <= 0.05 < boundary.sequential_p(level * 1.02, look, looks)
        )
    one = boundary.nominal_level(0.05, 2, looks, two_sided=False)
    assert 0.02 < one < 0.05 and boundary.sequential_p(one * 0.98, 2, looks, two_sided=False) <= 0.05


def test_obrien_fleming_keeps_alpha_for_the_last_look():
    looks = (3, 4, 5, 6)
    first, last = (boundary.nominal_level(0.05, k, looks, shape=0.0) for k in (1, 4))
    assert first < 0.01 and 0.03 < last < 0.05


def test_looks_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        boundary.sequential_p(0.01, 1, (4, 3))
    with pytest.raises(ValueError, match="1-based"):
        boundary.sequential_p(0.01, 3, (3, 4))
