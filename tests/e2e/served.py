"""A real `panelsrv serve` (a subprocess, N worker processes) and a raw-socket API client.

`Served` starts the command line a production box runs, waits until the ops listener says
ready, and stops it with SIGTERM. `World` makes panels/users/keys/services straight in the
database. `call()` sends one request (form, JSON or multipart) over a fresh connection and
returns the parsed response.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode

import orjson

from panelsrv.store import admin, db, keys
from tests.http.httpkit import Client, Response, free_port

# Limits far above what a test sends, unless a test is about limits.
GENEROUS = {
    "ip_rate": "1000000",
    "ip_burst": "1000000",
    "user_rate": "1000000",
    "user_burst": "1000000",
}


class Served:
    def __init__(
        self,
        database_url: str,
        *,
        workers: int = 1,
        settings: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        output: Path | None = None,
    ) -> None:
        """`output`: a file that gets the server's stdout and stderr (its log lines), for a
        test that reads them; else they are the test run's."""
        self.database_url = database_url
        self.output = output
        self.workers = workers
        self.settings = {**GENEROUS, **(settings or {})}
        self.env = env or {}
        self.port = free_port()
        self.ops_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, until: str = "/readyz") -> Served:
        """Start, and wait until the ops listener answers 200 at `until` (`/healthz`: the
        processes listen, whether or not the database answers)."""
        args = [
            sys.executable,
            "-m",
            "panelsrv",
            "serve",
            "--database-url",
            self.database_url,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--set",
            f"ops_port={self.ops_port}",
        ]
        for name, value in self.settings.items():
            args += ["--set", f"{name}={value}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}
        out = None if self.output is None else self.output.open("ab")
        try:
            self.proc = subprocess.Popen(
                args,
                env={**env, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=None if out is None else subprocess.STDOUT,
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while not self._ready(until):
            if self.proc.poll() is not None:
                raise RuntimeError(f"panelsrv serve exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("panelsrv serve did not become ready")
            time.sleep(0.1)
        return self

    def _ready(self, path: str = "/readyz") -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ops_port), 0.5) as s:
                s.sendall(
                    b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
                )
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def encode(fields: Mapping[str, object], encoding: str) -> tuple[bytes, bytes]:
    """(content type header line, body) for form, json or multipart."""
    if encoding == "json":
        return b"Content-Type: application/json\r\n", orjson.dumps(fields)
    if encoding == "multipart":
        boundary = secrets.token_hex(8).encode()
        parts = b"".join(
            b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (boundary, str(k).encode(), str(v).encode())
            for k, v in fields.items()
        )
        body = parts + b"--%s--\r\n" % boundary
        return b"Content-Type: multipart/form-data; boundary=%s\r\n" % boundary, body
    return (
        b"Content-Type: application/x-www-form-urlencoded\r\n",
        urlencode({k: str(v) for k, v in fields.items()}).encode(),
    )


async def call(
    port: int,
    fields: Mapping[str, object],
    *,
    host: str = "panel.test",
    encoding: str = "form",
    headers: bytes = b"",
) -> Response:
    ctype, body = encode(fields, encoding)
    client = await Client.connect(port)
    try:
        await client.send(
            b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\n%s%sContent-Length: %d\r\n"
            b"\r\n%s" % (host.encode(), ctype, headers, len(body), body)
        )
        response = await client.final(timeout=30.0)
        assert response is not None, "connection closed without an answer"
        return response
    finally:
        await client.close()


class World:
    """Panels, users, keys and services for a test, made through the store's own functions."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    async def panel(self, settings: Mapping[str, str] | None = None, currency: str = "USD") -> str:
        domain = f"p{secrets.token_hex(5)}.test"
        conn = await db.connect(self.database_url)
        try:
            await admin.add_panel(conn, domain, currency)
            for name, value in (settings or {}).items():
                await admin.set_panel(conn, domain, name, value)
        finally:
            await conn.close()
        return domain

    async def user(
        self, domain: str, balance: str = "100.00", discount: str = "0"
    ) -> tuple[int, str]:
        """(user id, raw key)"""
        conn = await db.connect(self.database_url)
        try:
            user, _ = await admin.add_user(
                conn, f"u{secrets.token_hex(5)}@example.test", domain, balance, discount
            )
            return user.id, (await keys.create(conn, user.id)).raw
        finally:
            await conn.close()

    async def service(self, domain: str | None = None, **spec: object) -> int:
        fields: dict[str, object] = {
            "name": f"svc {secrets.token_hex(3)}",
            "type": "default",
            "rate": "1.00",
            "min": 10,
            "max": 100_000,
        }
        fields.update(spec)
        conn = await db.connect(self.database_url)
        try:
            service_id, _ = await admin.add_service(
                conn, admin.ServiceSpec(domain=domain, **fields)
            )  # type: ignore[arg-type]
            return service_id
        finally:
            await conn.close()


async def visible(port: int, domain: str, key: str, timeout: float = 5.0) -> None:
    """Wait until the server's processes have picked up a new panel/key (NOTIFY + reload).

    Polls every worker process: each answers on its own once its catalog has the panel."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 10:
        r = await call(port, {"key": key, "action": "balance"}, host=domain)
        streak = streak + 1 if r.status == 200 else 0
        if time.monotonic() > deadline:
            raise AssertionError(f"panel {domain} not visible: {r.status} {r.body!r}")
        if streak == 0:
            await asyncio.sleep(0.05)


async def offered(port: int, domain: str, key: str, *services: int, timeout: float = 5.0) -> None:
    """Wait until every process knows the panel and offers these (local or global) service ids
    (a catalog reload after NOTIFY): 30 rounds in a row, each request on a fresh connection,
    answer alike. Alike, not merely "known": a process that knows the panel but not yet its new
    service 7 takes 7 as the global id of some shared service of the test database, and answers
    with that service's bounds. (The kernel spreads connections over the processes: ten rounds
    in a row all reached one of two processes about once in 500 waits.)"""
    await visible(port, domain, key, timeout)
    deadline = time.monotonic() + timeout
    streak = 0
    last: list[bytes] = []
    while streak < 30:
        answers = []
        for service in services:
            # quantity 0 is below every minimum: a known service answers with its bounds.
            r = await call(
                port,
                {
                    "key": key,
                    "action": "add",
                    "service": service,
                    "quantity": 0,
                    "link": "https://example.com/",
                },
                host=domain,
            )
            answers.append(r.body)
        known = all(json.loads(a) != {"error": "Incorrect service ID"} for a in answers)
        streak = 0 if not known else streak + 1 if answers == last else 1
        last = answers
        assert time.monotonic() < deadline, f"services {services} not offered on {domain}"
        if not known:
            await asyncio.sleep(0.05)
