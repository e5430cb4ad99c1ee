from __future__ import annotations

from decimal import Decimal

import pytest

from kunpay_worker.domain.fees import FeeError, FeeSchedule, gross_for, split_gross

D = Decimal
OLD_PACKAGE = FeeSchedule(
    fixed_provider=D("50"),
    percentage_provider=D("2.5"),
    fixed_platform=D("0"),
    percentage_platform=D("1"),
)


def test_the_old_packages_example_in_whole_xaf() -> None:
    # gross = 100 × (5000 + 50) / (100 − 3.5) = 5233.16… → 5234 XAF
    split = gross_for(D("5000"), OLD_PACKAGE, "XAF")
    assert split.gross == D("5234")
    assert split.fee == D("234")
    assert split.provider_fee == D("181")  # 50 + 2.5 % of 5234 = 180.85, rounded up
    assert split.platform_fee == D("53")
    assert split.provider_fee + split.platform_fee == split.fee


@pytest.mark.parametrize(
    ("net", "fees", "currency", "gross"),
    [
        (D("5000"), FeeSchedule(D(0), D(0), D(0), D(0)), "XAF", D("5000")),
        (D("1"), OLD_PACKAGE, "XAF", D("53")),
        (D("100000"), OLD_PACKAGE, "XAF", D("103679")),
        (D("10"), FeeSchedule(D("0.30"), D("2.9"), D(0), D(0)), "EUR", D("10.61")),
        (D("5000"), FeeSchedule(D(0), D("50"), D(0), D("49.5")), "XAF", D("1000000")),
    ],
)
def test_quotes_round_up_so_the_merchant_nets_at_least_net(
    net: Decimal, fees: FeeSchedule, currency: str, gross: Decimal
) -> None:
    split = gross_for(net, fees, currency)
    assert split.gross == gross
    nets = split.gross - fees.fixed - split.gross * fees.percentage / 100
    assert nets >= net


@pytest.mark.parametrize(
    ("provider", "platform"), [(D("60"), D("40")), (D("100"), D("0")), (D("99"), D("2"))]
)
def test_percentages_of_100_or_more_are_refused(provider: Decimal, platform: Decimal) -> None:
    with pytest.raises(FeeError, match="100%"):
        FeeSchedule(D(0), provider, D(0), platform)


def test_negative_fees_are_refused() -> None:
    with pytest.raises(FeeError, match="negative"):
        FeeSchedule(D("-1"), D(0), D(0), D(0))


def test_a_gross_splits_into_net_and_fees() -> None:
    split = split_gross(D("5234"), OLD_PACKAGE, "XAF")
    assert split.net == D("5000")
    assert split.fee == D("234")


def test_a_gross_that_does_not_cover_the_fees_is_refused() -> None:
    with pytest.raises(FeeError, match="does not cover"):
        split_gross(D("50"), OLD_PACKAGE, "XAF")


def test_a_net_amount_finer_than_the_currency_is_refused() -> None:
    with pytest.raises(FeeError, match="0 decimal places"):
        gross_for(D("5000.5"), OLD_PACKAGE, "XAF")
