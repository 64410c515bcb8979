"""The layering the design promises, checked on the source: who may import whom.

- `http` never imports `api`, `store`, `worker` or asyncpg: it receives its handler.
- `api` never sees a transport (`http`, httptools).
- `store` and `worker` never import `http` or `api`.
- leaves import nothing from the package but `errors`.
- the simulated provider (`sim/`), the process supervisor (`procs.py`) and the API client
  (`client/`, which resellers import alone) are self-contained: nothing from the package but
  themselves (and the worker never imports the simulator).
- SQL is written only under `store/`: no string constant elsewhere is a statement.
- inside `http`, a connection's modules import only downwards: the listener owns the protocol,
  the protocol owns the Reader, and the Reader knows neither (it writes to a Sink).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "panelsrv"

RULES = {
    "http": ("panelsrv.api", "panelsrv.store", "panelsrv.worker", "panelsrv.guard", "asyncpg"),
    "api": ("panelsrv.http", "httptools", "panelsrv.worker"),
    "store": ("panelsrv.http", "panelsrv.api", "panelsrv.worker", "panelsrv.guard"),
    "worker": ("panelsrv.http", "panelsrv.api", "panelsrv.guard", "panelsrv.sim"),
    "guard": ("panelsrv.http", "panelsrv.api", "panelsrv.store", "panelsrv.worker", "asyncpg"),
}
LEAVES = (
    "errors.py",
    "money.py",
    "config.py",
    "panelconf.py",
    "servicetypes.py",
    "netsafe.py",
    "metrics.py",
    "api/actions.py",
)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layers_import_only_downwards(layer: str) -> None:
    for path in (PACKAGE / layer).glob("*.py"):
        bad = {
            name
            for name in imports(path)
            if any(name == f or name.startswith(f + ".") for f in RULES[layer])
        }
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_from_the_package(leaf: str) -> None:
    own = {
        name
        for name in imports(PACKAGE / leaf)
        if name.startswith("panelsrv") and not name.startswith("panelsrv.errors")
    }
    assert not own, f"{leaf} imports {sorted(own)}"


@pytest.mark.parametrize("room", ["sim", "procs.py", "client"])
def test_self_contained_rooms_import_only_themselves(room: str) -> None:
    own = "panelsrv." + room.removesuffix(".py")
    paths = [PACKAGE / room] if room.endswith(".py") else sorted((PACKAGE / room).glob("*.py"))
    for path in paths:
        bad = {n for n in imports(path) if n.startswith("panelsrv") and not n.startswith(own)}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


_STATEMENT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|TRUNCATE)\b.*\b(FROM|INTO|SET|"
    r"TABLE|VALUES|\d)\b",
    re.I | re.S,
)


def test_sql_is_written_only_under_store() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "store"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _STATEMENT.match(node.value)
    ]
    assert not found, found
HTTP_INWARD = {
    "http/reader.py": ("panelsrv.http.listener", "panelsrv.http.protocol"),
    "http/protocol.py": ("panelsrv.http.listener",),
}


@pytest.mark.parametrize("module", sorted(HTTP_INWARD))
def test_the_connection_modules_import_no_circle(module: str) -> None:
    bad = {
        name
        for name in imports(PACKAGE / module)
        if any(name == f or name.startswith(f + ".") for f in HTTP_INWARD[module])
    }
    assert not bad, f"{module} imports {sorted(bad)}"
