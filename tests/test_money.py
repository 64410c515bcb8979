import pytest

from panelsrv import money


@pytest.mark.parametrize(
    ("text", "units", "shown"),
    [
        ("0", 0, "0.00"),
        ("10", 1_000_000, "10.00"),
        ("0.45", 45_000, "0.45"),
        ("42.81", 4_281_000, "42.81"),
        ("0.00001", 1, "0.00001"),
        ("1.5", 150_000, "1.50"),
        ("12.345", 1_234_500, "12.345"),
    ],
)
def test_parse_and_format_round_trip(text: str, units: int, shown: str) -> None:
    assert money.parse(text) == units
    assert money.format(units) == shown


@pytest.mark.parametrize("bad", ["", "1e3", "NaN", "inf", "0.000001", "-1", "1_000", "abc", "1 0"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(money.MoneyError):
        money.parse(bad)


def test_charge_formula_is_exact() -> None:
    rate = money.parse("0.45")  # per 1000
    assert money.charge(rate, 1000) == money.parse("0.45")
    assert money.charge(rate, 1) == 45  # 0.00045
    assert money.charge(rate, 1000, runs=3) == money.parse("1.35")
    assert money.charge(money.parse("0.001"), 1) == 0  # 0.000001 rounds half up to 0
    assert money.charge(money.parse("0.005"), 1) == 1  # 0.000005 rounds half up to 0.00001


def test_user_rate_and_refunds() -> None:
    assert money.user_rate(money.parse("1.00"), 500) == money.parse("0.95")
    assert money.user_rate(money.parse("1.00"), 500, override=7) == 7
    assert money.partial_refund(100, remains=30, quantity=100) == 30
    assert money.partial_refund(100, remains=300, quantity=100) == 100
    assert money.partial_refund(10, remains=1, quantity=3) == 3  # rounded down
    assert money.parse_percent_bp("2.5") == 250
