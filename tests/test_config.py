from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from panelsrv import config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "panelsrv.toml"


def test_shipped_file_documents_every_setting_at_its_default() -> None:
    documented = tomllib.loads(SHIPPED.read_text())
    defaults = msgspec.structs.asdict(config.Config())
    assert documented == defaults


def test_precedence_command_line_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "panelsrv.toml"
    path.write_text("port = 1111\nworkers = 3\nip_rate = 5.0\n")
    env = {
        "PANELSRV_PORT": "2222",
        "PANELSRV_WORKERS": "4",
        "PANELSRV_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.0/8",
    }
    cfg = config.load({"port": "3333"}, env, str(path))
    assert (cfg.port, cfg.workers, cfg.ip_rate) == (3333, 4, 5.0)
    assert cfg.trusted_proxies == ["10.0.0.1", "10.0.0.0/8"]
    assert config.load({}, {"PANELSRV_CONFIG": str(path)}).port == 1111
    assert config.load({}, {}).port == 8080


@pytest.mark.parametrize(
    ("args", "env", "text", "names"),
    [
        ({}, {"PANELSRV_PORT": "http"}, "", "PANELSRV_PORT"),
        ({}, {"PANELSRV_PROT": "1"}, "", "PANELSRV_PROT"),
        ({"port": "99999"}, {}, "", "port"),
        ({"bogus": "1"}, {}, "", "bogus"),
        ({}, {}, "ip_rate = 'fast'\n", "ip_rate"),
        ({}, {}, "ip_rat = 1\n", "ip_rat"),
        ({}, {}, "port = [\n", "panelsrv.toml"),
    ],
)
def test_unknown_or_mistyped_settings_are_named(
    tmp_path: Path, args: dict, env: dict, text: str, names: str
) -> None:
    path = None
    if text:
        path = tmp_path / "panelsrv.toml"
        path.write_text(text)
    with pytest.raises(config.ConfigError, match=names):
        config.load(args, env, str(path) if path else None)


def test_test_variables_are_not_settings() -> None:
    assert config.load({}, {"PANELSRV_TEST_DATABASE_URL": "x"}).database_url == ""
