"""The short chaos run (issue 18, point 1): bench/chaos.py's `Run` for 12 cycles, three rounds
of every kind of fault: about 65 s of faults, 90 s in all (a PostgreSQL of its own to start, the
settling and the checks).

`serve --workers 2`, two workers, the faulty simulated provider, and a PostgreSQL and a Redis of
the run's own (Redis when `redis-server` is installed; without it the Redis faults are not
dealt, and the run says `"redis": false`), clients with idempotency keys; a fault every 2-5 s.
Every check of the long run must hold (`problems` all 0), and the figures are printed
(`pytest -s`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import Run

pytestmark = pytest.mark.slow

CYCLES = 12
SETTLE = 60.0  # seconds the system may take to finish every order once the faults stop


async def test_a_minute_of_faults_of_every_kind_leaves_the_books_right(tmp_path: Path) -> None:
    chaos = Run(tmp_path, 0.0, seed=18, cycles=CYCLES)
    try:
        figures = await chaos.run(settle_timeout=SETTLE)
    finally:
        await chaos.close()
    print(json.dumps(figures, indent=2))
    assert figures["problems"] == dict.fromkeys(figures["problems"], 0), figures["problems"]
    assert figures["ok"]
    assert figures["faults"] == dict.fromkeys(chaos.kinds, CYCLES // len(chaos.kinds))
    assert figures["left_active"] == {"orders": 0, "refills": 0}
    assert figures["definitive_orders"] > 100
    assert figures["provider_answers_lost_after_acting"].get("add", 0) > 0
    assert figures["first_request_after_database_back"].keys() == {"200"}
