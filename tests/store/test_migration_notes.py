"""Migrations are applied in order and never edited in effect, so a function created in one may
be replaced by a later one. A reader of the earlier file must see that: every function a later
migration replaces (CREATE OR REPLACE) carries, just above its first CREATE, a line
`-- Replaced by NNN_name.sql` naming each migration that replaces it."""

from __future__ import annotations

import re
from collections import defaultdict

from panelsrv.store.db import migration_files

CREATE = re.compile(r"^CREATE (OR REPLACE )?FUNCTION (\w+)", re.M)


def test_every_replaced_function_says_where_it_was_replaced() -> None:
    files = migration_files()
    first: dict[str, str] = {}
    replaced: dict[str, list[str]] = defaultdict(list)
    for version, text in files:
        for match in CREATE.finditer(text):
            name = match.group(2)
            if name not in first:
                first[name] = version
            elif match.group(1):
                replaced[name].append(version)
    texts = dict(files)
    missing = []
    for name, versions in replaced.items():
        notes = _comment_above(texts[first[name]], name)
        for version in versions:
            if f"-- Replaced by {version}.sql" not in notes:
                missing.append(f"{first[name]}: {name} (replaced by {version})")
    assert not missing, missing


def _comment_above(text: str, name: str) -> str:
    """The run of `--` lines just above the function's first CREATE."""
    match = re.search(rf"^CREATE (OR REPLACE )?FUNCTION {name}\b", text, re.M)
    assert match is not None
    lines = text[: match.start()].splitlines()
    comment = []
    while lines and lines[-1].startswith("--"):
        comment.append(lines.pop())
    return "\n".join(comment)
