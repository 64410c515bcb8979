"""The embedded PostgreSQL, end to end: no database_url, shared between running commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest


def test_embedded_database_is_shared_and_stopped_by_the_last_user(tmp_path: Path) -> None:
    pytest.importorskip("pgserver", reason="no pgserver wheel for this Python (3.13 and later)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}
    env["PANELSRV_DATA_DIR"] = str(tmp_path / "var")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from panelsrv.store import db;"
            "print(db.embedded_url(sys.argv[1]), flush=True); sys.stdin.read()",
            env["PANELSRV_DATA_DIR"],
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        url = holder.stdout.readline().strip()
        assert url.startswith("postgresql://")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "panelsrv",
                "panel",
                "add",
                "--domain",
                "embedded.test",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["domain"] == "embedded.test"
        # The admin command left; the server it shared is still up for the holder.
        pid_file = tmp_path / "var" / "pgdata" / "postmaster.pid"
        assert pid_file.exists()
        again = subprocess.run(
            [sys.executable, "-m", "panelsrv", "audit", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert again.returncode == 0 and orjson.loads(again.stdout)["ok"], again.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(60)
    assert not (tmp_path / "var" / "pgdata" / "postmaster.pid").exists()


def test_without_pgserver_a_command_says_to_set_database_url(tmp_path: Path) -> None:
    # pgserver has no wheel for Python 3.13, where pyproject leaves it out: a command without a
    # database_url must say what to do, not end in an ImportError's traceback
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}
    env["PANELSRV_DATA_DIR"] = str(tmp_path / "var")
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['pgserver'] = None; from panelsrv.cli import main;"
         " main(['audit'])"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "embedded PostgreSQL is not installed" in done.stderr
    assert "set database_url (or PANELSRV_DATABASE_URL)" in done.stderr
    assert not (tmp_path / "var" / "pgdata").exists()
