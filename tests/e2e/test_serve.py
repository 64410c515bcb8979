"""`panelsrv serve --workers 2` as systemd runs it: readiness over NOTIFY_SOCKET, two worker
processes (plus the limits hub) answering, SIGTERM draining to exit status 0."""

from __future__ import annotations

import os
import signal
import socket
import tempfile

import psutil

from tests.e2e.served import Served, World, call, visible


async def test_notify_ready_two_workers_and_clean_stop(database_url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(30)
        served = Served(database_url, workers=2, env={"NOTIFY_SOCKET": path}).start()
        try:
            assert sock.recv(256) == b"READY=1"
            assert served.proc is not None
            children = psutil.Process(served.proc.pid).children()
            assert len(children) == 3  # two API workers and the limits hub
            world = World(database_url)
            domain = await world.panel()
            _, key = await world.user(domain, balance="1.00")
            await visible(served.port, domain, key)  # ten answers in a row, fresh connections
            r = await call(served.port, {"key": key, "action": "balance"}, host=domain)
            assert r.json() == {"balance": "1.00", "currency": "USD"}
        finally:
            status = served.stop(signal.SIGTERM)
        assert status == 0
        assert sock.recv(256) == b"STOPPING=1"
        sock.close()
