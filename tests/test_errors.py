"""The range-checking helpers of ``l2l_lightning.errors``: what they accept, refuse and say."""

import math

import pytest

from l2l_lightning.errors import ConfigError, check_float_range, check_int_range


@pytest.mark.parametrize(
    "value, low, high, result",
    [(1, 1, 5, 1), (5, 1, 5, 5), (0, 0, 9, 0), (2, 2, None, 2), (10**9, 2, None, 10**9)],
)
def test_int_range_accepts_integers_from_low_to_high(value, low, high, result):
    assert check_int_range("n", value, low, high) == result


@pytest.mark.parametrize(
    "value, low, high, message",
    [
        (0, 1, 5, "n=0 must be an integer from 1 to 5 (what for)"),
        (6, 1, 5, "n=6 must be an integer from 1 to 5 (what for)"),
        (True, 0, 5, "n=True must be an integer from 0 to 5 (what for)"),
        (2.0, 1, 5, "n=2.0 must be an integer from 1 to 5 (what for)"),
        ("3", 1, 5, "n='3' must be an integer from 1 to 5 (what for)"),
        (1, 2, None, "n=1 must be an integer >= 2 (what for)"),
        (False, 0, None, "n=False must be an integer >= 0 (what for)"),
    ],
)
def test_int_range_refuses_bools_other_types_and_out_of_range(value, low, high, message):
    with pytest.raises(ConfigError) as error:
        check_int_range("n", value, low, high, " (what for)")
    assert str(error.value) == message


@pytest.mark.parametrize(
    "value, low, high, result",
    [(0, 0, 1, 0.0), (0.999, 0, 1, 0.999), (19.5, 0, 20, 19.5), (1, 1, math.inf, 1.0), (1e300, 1, math.inf, 1e300)],
)
def test_float_range_accepts_finite_numbers_in_the_half_open_interval(value, low, high, result):
    out = check_float_range("x", value, low, high)
    assert out == result and type(out) is float


@pytest.mark.parametrize(
    "value, low, high, message",
    [
        (1, 0, 1, "x=1 must be a number in [0, 1) (what for)"),
        (-0.5, 0, 20, "x=-0.5 must be a number in [0, 20) (what for)"),
        (True, 0, 1, "x=True must be a number in [0, 1) (what for)"),
        (float("nan"), 0, 1, "x=nan must be a number in [0, 1) (what for)"),
        ("0.5", 0, 1, "x='0.5' must be a number in [0, 1) (what for)"),
        (0.5, 1, math.inf, "x=0.5 must be a finite number >= 1 (what for)"),
        (math.inf, 1, math.inf, "x=inf must be a finite number >= 1 (what for)"),
    ],
)
def test_float_range_refuses_bools_non_finite_and_out_of_range(value, low, high, message):
    with pytest.raises(ConfigError) as error:
        check_float_range("x", value, low, high, " (what for)")
    assert str(error.value) == message
