"""The operations listener and the metrics shared by worker processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from panelsrv import metrics
from panelsrv.http.listener import HttpServer
from panelsrv.http.ops import MetricsShare, ops_routes
from tests.http.httpkit import Client
from tests.kit.waiting import until


async def _get(port: int, path: bytes, method: bytes = b"GET") -> tuple[int, dict[str, str], bytes]:
    client = await Client.connect(port)
    await client.send(b"%s %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % (method, path))
    response = await client.final()
    await client.close()
    assert response is not None
    return response.status, response.headers, response.body


async def test_health_readiness_and_metrics_endpoints() -> None:
    state = {"ready": True}
    registry = metrics.Registry()
    registry.counter("t_total", "T").inc()

    async def ready() -> bool:
        if state["ready"] is None:
            await asyncio.Event().wait()  # hangs: the readiness timeout answers
        if state["ready"] == "boom":
            raise ConnectionRefusedError("db down")
        return bool(state["ready"])

    server = HttpServer(ops_routes(ready, registry.render, ready_timeout=0.1))
    await server.start("127.0.0.1", 0)
    try:
        status, _, body = await _get(server.port, b"/healthz")
        assert (status, body) == (200, b'{"status":"ok"}')
        assert (await _get(server.port, b"/readyz"))[0] == 200
        for value in (False, None, "boom"):
            state["ready"] = value  # type: ignore[assignment]
            status, headers, body = await _get(server.port, b"/readyz")
            assert (status, body) == (503, b'{"status":"unavailable"}')
            assert headers["retry-after"] == "1"
        status, headers, body = await _get(server.port, b"/metrics")
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"t_total 1" in body
        status, headers, body = await _get(server.port, b"/healthz", b"POST")
        assert status == 405 and headers["allow"] == "GET"
        assert body == b'{"error":"Method not allowed: use GET"}'
        assert (await _get(server.port, b"/api/v2", b"POST"))[0] == 404
    finally:
        await server.stop(1.0)


async def test_workers_share_one_scrape_and_survive_restarts(tmp_path: Path) -> None:
    def worker() -> tuple[metrics.Registry, metrics.ServerMetrics]:
        registry = metrics.Registry()
        return registry, metrics.ServerMetrics(registry)

    reg0, m0 = worker()
    reg1, m1 = worker()
    share0 = MetricsShare(reg0, str(tmp_path), 0, interval=0.05)
    share1 = MetricsShare(reg1, str(tmp_path), 1, interval=0.05)
    await share0.start()
    await share1.start()
    m0.request_done("add", 200, 0.01)
    m1.request_done("add", 200, 0.01)
    m1.request_done("add", 200, 0.01)
    m1.connections.value = 4
    total = 'panelsrv_http_requests_total{action="add",status="200"} 3'
    await until(lambda: total in share0.collect().decode())  # slot 1 has written its file
    text = share0.collect().decode()
    assert "panelsrv_http_open_connections 4" in text

    # slot 1 crashes and a new process takes its place: counters carry on, gauges do not
    await share1.stop(0)
    reg1b, m1b = worker()
    share1b = MetricsShare(reg1b, str(tmp_path), 1, interval=0.05)
    await share1b.start()
    m1b.request_done("add", 200, 0.01)
    text = share1b.collect().decode()
    assert 'panelsrv_http_requests_total{action="add",status="200"} 4' in text
    assert "panelsrv_http_open_connections 0" in text
    await share0.stop(0)
    await share1b.stop(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics-0.json", "metrics-1.json"]


def test_one_process_renders_its_own_registry() -> None:
    registry = metrics.Registry()
    registry.counter("t_total", "T").inc()
    assert b"t_total 1" in MetricsShare(registry, None, 0).collect()
