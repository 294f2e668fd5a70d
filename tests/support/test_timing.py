"""The slowness factor that scales every deadline in the tests."""

from __future__ import annotations

import pytest

from tests.support.timing import FACTOR_VARIABLE, SLOWNESS, scaled, slowness


def test_the_requested_factor_is_honoured() -> None:
    assert slowness({FACTOR_VARIABLE: "4"}) >= 4


def test_deadlines_are_never_shortened() -> None:
    assert slowness({}) >= 1 and slowness({FACTOR_VARIABLE: "0.5"}) >= 1
    assert SLOWNESS >= 1 and scaled(10) >= 10


@pytest.mark.parametrize("value", ["four", "0", "-2", "nan", "inf"])
def test_a_factor_that_is_not_a_positive_number_is_refused_naming_the_variable(
    value: str,
) -> None:
    with pytest.raises(ValueError, match=f"{FACTOR_VARIABLE}='{value}' is not a positive"):
        slowness({FACTOR_VARIABLE: value})
