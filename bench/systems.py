"""The systems under test: panelsrv and the baselines, each started pinned and ready to load.

Imports bench.procs. `start(name, ...)` returns a running `System` whose port answers the
benchmark's requests. panelsrv runs exactly as a production box runs it (`panelsrv serve`, the
default limits, 127.0.0.1 as the trusted proxy); only the port numbers and the log level are
set.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Proc, free_port

PY = sys.executable
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    open_file_cache max=16;
    open_file_cache_valid 60s;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {dir}/www;
        default_type application/json;
        # POST to a static file is a 405; answering the file instead is the classic way to give
        # nginx a fixed body of any size (`return` caps a literal at 4 KiB).
        location = /api/v2 {{ error_page 405 =200 $uri; }}
    }}
}}
"""


@dataclass
class System:
    name: str
    proc: Proc
    port: int

    def stop(self) -> None:
        self.proc.stop()


def _probe(host: str = "panel1.bench") -> bytes:
    body = b"action=balance&key=x"
    return (b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (host.encode(), len(body), body))


def clean_env() -> dict[str, str]:
    """Our environment without PANELSRV_* settings: every setting a run uses is on its
    command line."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}


def panelsrv(url: str, cpus: str | None, logs: Path, workers: int = 0, patch: str = "") -> System:
    """`panelsrv serve`; with `patch`, through bench.prototypes.<patch> (a measured prototype of
    a server change, applied by monkeypatching before the command runs)."""
    port, ops = free_port(), free_port()
    entry = ["-m", "panelsrv"] if not patch else ["-m", "bench.prototypes", patch]
    argv = [PY, *entry, "serve", "--database-url", url, "--port", str(port),
            "--set", f"ops_port={ops}", "--set", "log_level=warning"]
    if workers:
        argv += ["--workers", str(workers)]
    proc = Proc("panelsrv", argv, cpus, logs / "panelsrv.log", env=clean_env())
    proc.wait_ready(ops, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"HTTP/1.1 200")
    return System("panelsrv", proc, port)


def nginx(body: Path, cpus: str | None, logs: Path, work: Path) -> System:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "www" / "api").mkdir(parents=True, exist_ok=True)
    (work / "www" / "api" / "v2").write_bytes(body.read_bytes())
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port))
    # The workers drop root for `nobody`, who must read the body.
    for path in (work, work / "www", work / "www" / "api"):
        path.chmod(0o755)
    proc = Proc("nginx", ["nginx", "-p", str(work), "-c", str(conf), "-e", "stderr",
                          "-g", "daemon off;"], cpus, logs / "nginx.log")
    proc.wait_ready(port, _probe(), b"HTTP/1.1 200")
    return System("nginx", proc, port)


def minimal(mode: str, cpus: str | None, logs: Path, *, body: Path | None = None,
            url: str = "", users: Path | None = None) -> System:
    port = free_port()
    argv = [PY, "-m", "bench.baselines.minimal", "--port", str(port), "--mode", mode]
    if body is not None:
        argv += ["--body", str(body)]
    if mode == "db":
        argv += ["--database-url", url, "--users", str(users)]
    name = {"fixed": "minimal", "db": "minimal_db"}[mode]
    proc = Proc(name, argv, cpus, logs / f"{name}.log", env=clean_env())
    proc.wait_ready(port, _probe(), b"HTTP/1.1 200")
    return System(name, proc, port)


def fastapi(url: str, cpus: str | None, logs: Path) -> System:
    port = free_port()
    argv = [PY, "-m", "bench.baselines.fastapi_app", "--port", str(port), "--database-url", url]
    proc = Proc("fastapi", argv, cpus, logs / "fastapi.log", env=clean_env())
    proc.wait_ready(port, _probe(), b"HTTP/1.1 401")
    return System("fastapi", proc, port)
