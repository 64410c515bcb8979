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


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1e3",
        "NaN",
        "inf",
        "0.000001",
        "-1",
        "1_000",
        "abc",
        "1 0",
        # Past 5 decimals however long the input: Decimal's 28-digit context used to round these.
        "999999999999.99999999999999999",
        "1.0000000000000000000000000000001",
        "0.000000000000000000000000000001",
        # Only ASCII digits, only a minus, only a full decimal form.
        "+5",
        "\uff15",  # fullwidth 5
        "\u0665",  # Arabic-Indic 5
        "1.\u0665",
        "1.",
        ".5",
        "--1",
        "0x10",
        "5\n",
    ],
)
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(money.MoneyError):
        money.parse(bad)
    if bad != "-1":
        with pytest.raises(money.MoneyError):
            money.parse(bad, allow_negative=True)


def test_parse_negative_only_when_allowed() -> None:
    assert money.parse("-12.5", allow_negative=True) == -1_250_000
    assert money.parse("-0", allow_negative=True) == 0
    assert money.parse(" 7 ") == 700_000  # surrounding blanks of a CLI argument
    assert money.parse("999999999999.99999") == money.MAX_UNITS - 1
    with pytest.raises(money.MoneyError, match="too large"):
        money.parse("1000000000000.00001")


@pytest.mark.parametrize("bad", ["+5", "\uff15", "\u0665", "5.", ".5", "1e1", "2.555"])
def test_percent_refuses_what_is_not_plain_decimal_text(bad: str) -> None:
    with pytest.raises(money.MoneyError):
        money.parse_percent_bp(bad)


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
