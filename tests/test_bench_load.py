"""bench/load.py's pgbench script: it must call place_order as migrated now.

pgbench runs only under `make bench`, so when migration 012 dropped place_order's funds-body
argument the script (then its own copy of the statement) went on calling a function that no
longer existed. The script now substitutes its arguments into ledger.PLACE_ORDER; `make test`
checks one argument per placeholder and resolves the script's statement against the migrated
schema (EXPLAIN plans the call without running it, so no bench dataset is needed).
"""

from __future__ import annotations

import re

import asyncpg

from bench import load
from panelsrv.store import ledger

VALUES = {"uid": "1", "panel": "1", "svc": "1", "n": "7"}


def script_statement() -> str:
    """The script's SQL with pgbench's :variables given values (its \\set lines dropped)."""
    sql = "\n".join(line for line in load.PGBENCH_SCRIPT.splitlines()
                    if line and not line.startswith("\\"))
    return re.sub(r"(?<!:):(\w+)", lambda m: VALUES[m.group(1)], sql).rstrip(";\n")


def test_one_pgbench_argument_per_placeholder_of_the_order_statement() -> None:
    placeholders = {int(n) for n in re.findall(r"\$(\d+)", ledger.PLACE_ORDER)}
    assert placeholders == set(range(1, len(load.PGBENCH_ARGS) + 1))


async def test_pgbench_statement_resolves_against_the_migrated_place_order(
        database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        plan = await conn.fetch("EXPLAIN " + script_statement())
    finally:
        await conn.close()
    assert "place_order" in "\n".join(row[0] for row in plan)
