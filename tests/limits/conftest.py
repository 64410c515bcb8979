"""One `panelsrv serve --workers 2` (limits shared through the host's hub) for the limits tests.

Real limits (100 req/s, burst 100 per IP), a short block, and on the allow-list: the harness's
own address (127.0.0.1), the allow-list test's (127.0.0.9) and the revocation tests' (127.0.0.20,
whose refused keys must not block it). Each test sends its main traffic from its own address and
uses its own panel, users and keys.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.kit.stack import Served

BLOCK_SECONDS = 2
SYNC_INTERVAL = 0.1


@dataclass
class HubServer:
    served: Served
    run_dir: str  # RUNTIME_DIRECTORY: the hub's socket and each worker's metrics file

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def ops_port(self) -> int:
        return self.served.ops_port


@pytest.fixture(scope="package")
def hub_server(database_url: str) -> Iterator[HubServer]:
    run_dir = tempfile.mkdtemp(prefix="pl-")
    settings = {
        "ip_rate": "100",
        "ip_burst": "100",
        "block_seconds": str(BLOCK_SECONDS),
        "never_block": "127.0.0.1,127.0.0.9,127.0.0.20",
        "limit_sync_interval": str(SYNC_INTERVAL),
    }
    served = Served(
        database_url,
        workers=2,
        settings=settings,
        env={"RUNTIME_DIRECTORY": run_dir},
    )
    try:
        with served:
            yield HubServer(served, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
