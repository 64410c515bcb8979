"""One host without Redis: worker processes share their limits through the parent's hub."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
from pathlib import Path
from typing import Any

import pytest

from panelsrv.guard import Guard, GuardSettings
from panelsrv.guard.coord import excess_bound
from panelsrv.guard.hub import HubBackend, HubServer
from tests.guard.guardnet import hub_worker, paced_flood
from tests.kit.waiting import until

INTERVAL = 0.1


async def test_two_engines_over_the_hub_socket_do_not_multiply_the_limit(tmp_path: Path) -> None:
    hub = HubServer(str(tmp_path / "guard.sock"))
    await hub.start()
    settings = GuardSettings(sync_interval=INTERVAL)
    guards = [Guard(settings, pid=f"w{i}") for i in range(2)]
    try:
        for guard in guards:
            guard.start(HubBackend(str(tmp_path / "guard.sock")))
        await until(lambda: all(g.shared and g.coord.ip.procs == 2 for g in guards), 3.0)
        admitted, elapsed = await paced_flood(guards, "203.0.113.1", 1000, 1.0)
        for _ in range(settings.strike_limit):
            guards[0].strike("203.0.113.66")
        await until(lambda: guards[1].check_block("203.0.113.66") > 0, 1.0)
    finally:
        for guard in guards:
            await guard.close()
        await hub.close()
    r, b = settings.ip_rate, settings.ip_burst
    assert r * 1.0 <= admitted <= r * elapsed + b + excess_bound(2, r, b, INTERVAL)


async def test_a_dead_hub_means_local_limits_and_a_restarted_hub_is_rejoined(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "guard.sock")
    hub = HubServer(path)
    await hub.start()
    guard = Guard(GuardSettings(sync_interval=INTERVAL, sync_timeout=0.2))
    guard.start(HubBackend(path))
    try:
        await until(lambda: guard.shared, 2.0)
        await hub.close()
        await until(lambda: not guard.shared, 2.0)
        assert sum(guard.check_ip("192.0.2.1") == 0 for _ in range(150)) == 100
        hub = HubServer(path)
        await hub.start()
        await until(lambda: guard.shared, 3.0)
    finally:
        await guard.close()
        await hub.close()


@pytest.mark.slow
async def test_two_worker_processes_share_one_limit_through_the_hub(tmp_path: Path) -> None:
    path = str(tmp_path / "guard.sock")
    hub = HubServer(path)
    await hub.start()
    ctx = multiprocessing.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(target=hub_worker, args=(path, f"worker{i}", 2, go, 500, out)) for i in range(2)
    ]
    for worker in workers:
        worker.start()
    said: list[Any] = []

    def heard(count: int) -> bool:  # polled: the hub runs in this loop meanwhile
        with contextlib.suppress(queue.Empty):
            said.append(out.get_nowait())
        return len(said) >= count

    try:
        # both children imported, registered and saw P = 2: then they flood together
        await until(lambda: heard(2), 20, interval=0.02, what="both workers ready")
        assert said == ["ready", "ready"]
        go.set()
        await until(lambda: heard(4), 20, interval=0.02, what="both workers reported")
        results: list[tuple[int, float, float]] = said[2:]
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        await hub.close()
    assert len(results) == 2, "a worker did not report"
    admitted = sum(a for a, _, _ in results)
    elapsed = max(end for _, _, end in results) - min(start for _, start, _ in results)
    r, b = 100, 100
    assert admitted <= r * elapsed + b + excess_bound(2, r, b, INTERVAL)
    assert admitted >= r  # not divided down to nothing either
