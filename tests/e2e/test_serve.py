"""`panelsrv serve --workers 2` as systemd runs it: readiness over NOTIFY_SOCKET, two worker
processes (plus the limits hub) answering, SIGTERM draining to exit status 0."""

from __future__ import annotations

import os
import signal
import socket
import tempfile

import psutil

from tests.e2e.served import World, call, visible
from tests.kit.stack import Served
from tests.kit.waiting import until


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


def hub_child(parent: psutil.Process) -> psutil.Process | None:
    """The child listening on the limits hub's socket (all children share one command line)."""
    for child in parent.children():
        try:
            if any(c.laddr.endswith("guard.sock") for c in child.net_connections(kind="unix")):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


async def test_a_killed_limits_hub_is_restarted(database_url: str) -> None:
    served = Served(database_url, workers=2).start()
    try:
        assert served.proc is not None
        parent = psutil.Process(served.proc.pid)
        hub = hub_child(parent)
        assert hub is not None
        hub.kill()

        def restarted() -> bool:
            replacement = hub_child(parent)
            return replacement is not None and replacement.pid != hub.pid

        await until(restarted, 20, interval=0.05, what="the hub restarted")
        assert len(parent.children()) == 3
    finally:
        assert served.stop() == 0
