"""PostgreSQL going away and coming back, against real `panelsrv serve` and `panelsrv worker`
processes and a PostgreSQL server of the test's own (issue 13, points 2 and 3):

- restarted under load: while it is down every answer is 503 with Retry-After (never a hang,
  never a 500), and from the moment `select 1` works again every request succeeds, on every
  process: no pooled connection that died with the old server is handed out;
- down when the processes start: they start anyway, `/readyz` and the API answer 503, and both
  serve within about a second of the database answering, without a restart.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.pgcluster import Cluster, until_answering
from panelsrv.store import db
from tests.e2e.served import World, call, visible
from tests.e2e.test_unavailable import readyz
from tests.guard.guardnet import Proxy
from tests.http.httpkit import Client, free_port
from tests.kit.stack import Served, panelsrv_argv, spawn
from tests.kit.waiting import until

pytestmark = pytest.mark.slow

RATE = 50  # requests per second during the outage
OUTAGES = 'panelsrv_dependency_outages_total{dependency="database"}'
RECOVERIES = 'panelsrv_dependency_recoveries_total{dependency="database"}'
NO_HANG = 3.0  # seconds: an answer later than this is a hang


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    own = Cluster(tmp_path)
    try:
        yield own
    finally:
        own.close()


async def balance(port: int, domain: str, key: str) -> tuple[int, str | None]:
    r = await asyncio.wait_for(call(port, {"key": key, "action": "balance"}, host=domain), NO_HANG)
    return r.status, r.headers.get("retry-after")


async def answering(ops_port: int) -> int | None:
    """/readyz's status, or None while nothing listens there yet."""
    try:
        return await readyz(ops_port)
    except OSError:
        return None


async def metric(ops_port: int, name: str) -> float:
    client = await Client.connect(ops_port)
    try:
        await client.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await client.final(timeout=10)
        assert response is not None
    finally:
        await client.close()
    lines = [line for line in response.body.decode().splitlines() if line.startswith(name)]
    return sum(float(line.split()[-1]) for line in lines)


async def test_a_restart_under_load_answers_503_while_down_and_nothing_but_200_after(
    cluster: Cluster, capfd: pytest.CaptureFixture[str]
) -> None:
    url = cluster.url()
    with Served(url, workers=2) as served:  # 8 pooled connections per process
        world = World(url)
        domain = await world.panel()
        _, key = await world.user(domain, balance="1.00")
        await visible(served.port, domain, key)
        answers: list[tuple[int, str | None]] = []
        stop_load = asyncio.Event()

        async def load() -> None:
            while not stop_load.is_set():
                answers.append(await balance(served.port, domain, key))
                await asyncio.sleep(1 / RATE)

        loader = asyncio.get_running_loop().create_task(load())
        await until(lambda: len(answers) >= 10, 10)  # under load
        # Every backend killed, the server back within a fraction of a second: most pooled
        # connections see no request meanwhile, and are dead when the next one comes.
        await asyncio.to_thread(cluster.restart)
        await until_answering(url, 10.0)
        stop_load.set()
        await loader
        after = [await balance(served.port, domain, key) for _ in range(20)]
        # Each process that met the outage says so once, and once that it is over; /metrics
        # (every process's, summed) counts the same outages and recoveries.
        log = capfd.readouterr().err
        began = log.count("database unavailable (")
        assert 1 <= began <= 2 and log.count("database available again after") == began, log

        async def counted() -> bool:  # each process shares its metrics about once a second
            return await metric(served.ops_port, RECOVERIES) >= began

        await until(counted, 5.0, interval=0.05, what="recoveries counted")
        assert await metric(served.ops_port, OUTAGES) == began
        assert await metric(served.ops_port, RECOVERIES) == began
    assert all(status in (200, 503) for status, _ in answers), answers
    assert all(int(ra or 0) >= 1 for status, ra in answers if status == 503)
    assert after == [(200, None)] * 20  # fresh connections: both processes answered some


async def test_serve_and_worker_started_while_the_database_is_down_serve_once_it_is_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    url = cluster.url()
    await (await db.open_migrated(url)).close()  # an installation whose database went down
    cluster.stop()
    served = Served(url, workers=2).start(until="/healthz")
    worker_log = tmp_path / "worker.log"
    worker_ops = free_port()
    worker = spawn(
        panelsrv_argv("worker", "--database-url", url, "--set", f"worker_ops_port={worker_ops}"),
        output=worker_log,
    )
    try:
        assert await readyz(served.ops_port) == 503
        status, retry_after = await balance(served.port, "any.test", "psk_x")
        assert status == 503 and int(retry_after or 0) >= 1

        async def started() -> bool:  # the worker answers on its ops port
            assert worker.poll() is None, worker_log.read_text()
            return await answering(worker_ops) is not None

        await until(started, 15.0, what=worker_log)
        # waiting for the database, not exited
        assert await answering(worker_ops) == 503 and worker.poll() is None

        await asyncio.to_thread(cluster.start)
        back = time.monotonic()

        async def ready() -> bool:
            return await readyz(served.ops_port) == 200

        await until(ready, 2.0, what="serve ready 2 s after the database")
        await until(
            lambda: b"database available again after" in worker_log.read_bytes(),
            2.0 - (time.monotonic() - back), what=worker_log,
        )  # fmt: skip
        assert await readyz(worker_ops) == 200
        assert await metric(worker_ops, OUTAGES) == 1
        assert await metric(worker_ops, RECOVERIES) == 1
        world = World(url)
        domain = await world.panel()
        _, key = await world.user(domain, balance="2.00")
        await visible(served.port, domain, key)
        assert await balance(served.port, domain, key) == (200, None)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, worker_log.read_text()
        assert served.stop() == 0


async def test_a_worker_waiting_for_the_database_stops_on_sigterm(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.stop()
    ops = free_port()
    worker = spawn(
        panelsrv_argv("worker", "--database-url", cluster.url(), "--set", f"worker_ops_port={ops}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    async def waiting() -> bool:  # started, and waiting for the database
        assert worker.poll() is None
        return await answering(ops) == 503

    await until(waiting, 15.0)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0


async def test_a_database_host_that_does_not_answer_does_not_keep_the_api_from_listening(
    cluster: Cluster,
) -> None:
    # A partitioned database host answers nothing, so each connect waits CONNECT_TIMEOUT (5 s):
    # a process must not wait for it before it listens.
    url = cluster.url()
    await (await db.open_migrated(url)).close()
    proxy, through = Proxy.for_database(url)
    await proxy.start()
    proxy.frozen = True
    served = Served(through(), workers=1)
    started = time.monotonic()
    await asyncio.to_thread(served.start, 30.0, "/healthz")
    try:
        listening = time.monotonic() - started
        assert listening < db.CONNECT_TIMEOUT, listening
        status, retry_after = await balance(served.port, "any.test", "psk_x")
        assert status == 503 and int(retry_after or 0) >= 1
        proxy.frozen = False  # the partition heals: served from then on, without a restart

        async def ready() -> bool:
            return await readyz(served.ops_port) == 200

        await until(ready, 3 * db.CONNECT_TIMEOUT, interval=0.05, what="ready once healed")
    finally:
        assert await asyncio.to_thread(served.stop) == 0
        await proxy.cut()
