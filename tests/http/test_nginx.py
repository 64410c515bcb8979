"""A real nginx, configured from the shipped config/nginx/panelsrv.conf, in front of the server.

The client connects from 127.0.0.2 (all of 127/8 is loopback) while nginx reaches the server
from 127.0.0.1, the trusted proxy; so the server must see 127.0.0.2: not nginx's address, and
not whatever the client forged in X-Forwarded-For / X-Real-IP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.http.httpkit import Client, free_port, start_server
from tests.kit.waiting import until
from tests.kit.wire import post

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "config" / "nginx" / "panelsrv.conf"
CLIENT_ADDR = "127.0.0.2"
pytestmark = pytest.mark.slow


def _find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    found = _find_nginx()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        install = ["install", "-y", "-q", "nginx"]
        for command in (install, ["update", "-q"], install):
            subprocess.run(
                ["apt-get", *command],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=300,
                check=False,
            )
            found = _find_nginx()
            if found is not None:
                break
    if found is None:
        pytest.skip("nginx is not installed and could not be installed")
    return found


def site_config(upstream_port: int, listen_port: int, logs: Path) -> str:
    text = SITE.read_text()
    for shipped, ours in [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("listen [::]:80;", ""),
        ("/var/log/nginx/", f"{logs}/"),
    ]:
        assert shipped in text, f"the shipped nginx config lost {shipped!r}"
        text = text.replace(shipped, ours)
    return text


async def _start_nginx(binary: str, prefix: Path, upstream_port: int) -> tuple[object, int]:
    port = free_port()
    (prefix / "site.conf").write_text(site_config(upstream_port, port, prefix))
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/default-access.log;
{temp}
    include {prefix}/site.conf;
}}
"""
    )
    proc = await asyncio.create_subprocess_exec(
        binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")
    )

    async def listening() -> bool:
        assert proc.returncode is None, (prefix / "error.log").read_text()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await until(listening, 5.0, interval=0.025, what="nginx listening")
    except AssertionError:
        proc.kill()
        await proc.wait()
        raise
    return proc, port


async def _via(port: int, data: bytes) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT_ADDR, 0))
    client = Client(reader, writer)
    await client.send(data)
    return client


async def test_requests_pass_through_nginx_with_the_real_client_address(
    nginx_binary: str, tmp_path: Path
) -> None:
    server = await start_server(trusted_proxies=["127.0.0.1", "::1"])
    proc, port = await _start_nginx(nginx_binary, tmp_path, server.port)
    try:
        forged = b"X-Forwarded-For: 6.6.6.6, 127.0.0.1\r\nX-Real-IP: 7.7.7.7\r\n"
        for headers in (b"", forged):
            client = await _via(port, post(b"key=k&action=balance", headers))
            response = await client.final()
            assert response is not None and response.status == 200
            seen = response.json()
            assert seen["client_ip"] == CLIENT_ADDR
            assert seen["host"] == "panel.test" and seen["body"] == "key=k&action=balance"
            await client.close()

        # a chunked body reaches the server whole; the query string and trailing slash pass
        client = await _via(
            port,
            b"POST /api/v2/?action=balance HTTP/1.1\r\nHost: panel.test\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nkey\r\n2\r\n=k\r\n0\r\n\r\n",
        )
        response = await client.final()
        assert response is not None and response.status == 200
        assert (response.json()["body"], response.json()["query"]) == ("key=k", "action=balance")
        await client.close()

        # nginx keeps its upstream connection: one server-side connection served them all
        assert len(server.conns) == 1

        client = await _via(port, post(target=b"/admin"))
        response = await client.final()
        assert response is not None and response.status == 404
        assert response.json() == {"error": "Not found"}
        await client.close()

        client = await _via(port, post(b"x" * (256 * 1024 + 1)))
        response = await client.final()
        assert response is not None and response.status == 413
        assert response.json() == {"error": "Request body too large"}
        await client.close()
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        await proc.wait()  # type: ignore[attr-defined]
        await server.stop(1.0)


async def test_nginx_answers_in_json_when_the_server_is_down(
    nginx_binary: str, tmp_path: Path
) -> None:
    proc, port = await _start_nginx(nginx_binary, tmp_path, free_port())
    try:
        client = await _via(port, post())
        response = await client.final()
        assert response is not None and response.status == 503
        assert response.json() == {"error": "Service unavailable"}
        assert response.headers["retry-after"] == "5"
        await client.close()
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        await proc.wait()  # type: ignore[attr-defined]


SECRET = b"psk_query_string_secret"


def _logged(prefix: Path) -> str:
    """Everything nginx wrote under `prefix` (its logs: the site's, and the defaults)."""
    return "".join(f.read_text(errors="replace") for f in prefix.glob("*.log"))


async def test_nginx_logs_no_query_string(nginx_binary: str, tmp_path: Path) -> None:
    """With `accept_get` on, GET clients put their key in the query string: the shipped site
    logs the path only, for answered requests, nginx's own refusals, an upstream that is down
    and a path that is not the API's, in its access and error logs."""
    server = await start_server(trusted_proxies=["127.0.0.1", "::1"])
    proc, port = await _start_nginx(nginx_binary, tmp_path, server.port)
    query = b"action=balance&key=" + SECRET
    host = b"Host: panel.test\r\n"
    try:
        client = await _via(port, b"GET /api/v2?%s HTTP/1.1\r\n%s\r\n" % (query, host))
        response = await client.final()
        assert response is not None and response.status == 200
        assert (response.json()["method"], response.json()["query"]) == ("GET", query.decode())
        await client.close()
        for request, status in [
            (b"GET /api/v3?%s HTTP/1.1\r\n%s\r\n" % (query, host), 404),
            (b"GET /api/v2?%s&x=%s HTTP/1.1\r\n%s\r\n" % (query, b"y" * 70_000, host), 414),
            (post(b"x" * (256 * 1024 + 1), target=b"/api/v2?" + query), 413),
        ]:
            client = await _via(port, request)
            response = await client.final()
            assert response is not None and response.status == status
            await client.close()
    finally:
        await server.stop(1.0)
    try:  # the server is gone: nginx's 503, after an error about the upstream
        client = await _via(port, b"GET /api/v2?%s HTTP/1.1\r\n%s\r\n" % (query, host))
        response = await client.final()
        assert response is not None and response.status == 503
        await client.close()
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        await proc.wait()  # type: ignore[attr-defined]
    access = (tmp_path / "panelsrv-access.log").read_text()
    assert '"GET /api/v2 HTTP/1.1" 200 ' in access and '"GET /api/v2 HTTP/1.1" 503 ' in access
    assert SECRET.decode() not in _logged(tmp_path)
