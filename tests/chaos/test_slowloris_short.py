"""The short slow-client run (issue 18, point 4): bench/slowloris.py's `measure` with 300 slow
connections (the long run: 1,000), about 30 s in all.

`serve --workers 2` with header and body timeouts of 2 s against the test database; 8 s of
steady traffic alone (100 balance requests a second), then 10 s of it while 300 connections
trickle heads and bodies from 127.0.0.2-127.0.0.9 (38 per address, under the per-IP cap of 256
that stays at its default). The checks of the long run that are not a speed hold here: all
steady requests 200, every slow connection dropped within its timeout (+1 s). The loaded p99
within 2x the unloaded one is a performance claim: it is `make slowloris`'s (bench/, measured
on a machine left to it), not a timed unit test's, which would pass or fail with whatever else
shares the machine's two cores; here it is printed with the other figures (`pytest -s`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.slowloris import measure

pytestmark = pytest.mark.slow

SLOW = 300


async def test_slow_clients_are_shed_in_time_and_leave_real_traffic_its_p99(
    database_url: str, tmp_path: Path
) -> None:
    figures = await measure(database_url, tmp_path, slow=SLOW, unloaded=8.0, ramp=3.0, loaded=10.0)
    print(json.dumps(figures, indent=2))
    problems = {k: n for k, n in figures["problems"].items() if k != "p99_over_2x"}
    assert problems == dict.fromkeys(problems, 0), figures
    # every slot was dropped and opened again several times while the traffic was measured
    for kind in ("shed_head", "shed_body"):
        assert figures[kind]["connections"] >= SLOW // 2 * 4, figures[kind]
