"""The API listens through process kills (issue 13, point 1): `serve --workers 2` whose API
processes are SIGKILLed about 3 s after each start, for 20 s; a probe connection every 100 ms is
refused (or reset before its answer) less than 5 % of the time, and nothing answers a 5xx but
503. Measured over 60 s: 6 of 600 probes reset (those in a killed process's accept queue), none
refused; with the restart backoff this replaced, 143 of 285 failed. 20 s is six young deaths
per process: a backoff doubling from 0.5 s would already keep each slot down for 15 s of them
(the restart rule itself is proved in tests/http/test_procs.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from bench.procs import listening_children
from tests.e2e.served import call, customer
from tests.kit.stack import served

pytestmark = pytest.mark.slow

KILL_EVERY = 3.0
DURATION = 20.0
PROBE_EVERY = 0.1


async def test_sigkills_every_3_s_leave_the_api_listening(database_url: str) -> None:
    with served(database_url, workers=2) as server:
        domain, key = await customer(server.port, database_url)
        outcomes: list[int | str] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.monotonic()
                try:
                    r = await asyncio.wait_for(
                        call(server.port, {"key": key, "action": "balance"}, host=domain), 5.0
                    )
                    outcomes.append(r.status)
                except (OSError, AssertionError, TimeoutError) as exc:
                    outcomes.append(type(exc).__name__)
                await asyncio.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))

        prober = asyncio.get_running_loop().create_task(probe())
        kills = 0
        end = time.monotonic() + DURATION
        while time.monotonic() < end:
            # Each API process dies about KILL_EVERY seconds after it started: the oldest one
            # every KILL_EVERY / 2 (of two). Young deaths are what the restart backoff punished.
            await asyncio.sleep(KILL_EVERY / 2)
            assert server.proc is not None
            victims = listening_children(server.proc.pid, server.port)
            if victims:
                oldest = min(victims, key=lambda pid: psutil.Process(pid).create_time())
                os.kill(oldest, signal.SIGKILL)
                kills += 1
        done.set()
        await prober
    failed = [o for o in outcomes if not isinstance(o, int)]
    statuses = {o for o in outcomes if isinstance(o, int)}
    assert kills >= 2 * DURATION / KILL_EVERY - 4
    assert len(outcomes) >= DURATION / PROBE_EVERY / 2
    assert len(failed) < 0.05 * len(outcomes), (len(failed), len(outcomes), failed[:10])
    assert statuses <= {200, 503}, statuses
