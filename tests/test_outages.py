"""An outage is one log line when it begins and one when it ends, however many failures it
holds, each counted once (issue 13, point 5)."""

from __future__ import annotations

import logging

import pytest

from panelsrv.outages import Outage


def test_one_line_per_fault_and_one_per_recovery_with_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    faults: list[int] = []
    recoveries: list[float] = []
    outage = Outage(
        "database",
        logging.getLogger("test.outage"),
        meanwhile="answering 503 until it is back",
        on_fault=lambda: faults.append(1),
        on_recovery=recoveries.append,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.WARNING, "test.outage")
    outage.recovered()  # up already: nothing to say
    for _ in range(1000):  # a flood of failing requests
        outage.failed("connection refused")
        now[0] += 0.01
    assert outage.down
    outage.recovered()
    outage.recovered()
    assert not outage.down
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable (connection refused); answering 503 until it is back",
        "database available again after 10.0 s",
    ]
    assert faults == [1] and recoveries == [pytest.approx(10.0)]
