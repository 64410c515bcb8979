"""Every setting, typed, and where it comes from.

Leaf module (imports nothing from panelsrv). Precedence, highest first: the command line,
`PANELSRV_<NAME>` environment variables, the TOML file named by `--config` / `PANELSRV_CONFIG`,
the defaults below. Each layer is validated on its own so an error names the setting and the
place it came from. `config/panelsrv.toml` documents every field; a test keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ENV_PREFIX = "PANELSRV_"
# Environment variables with this prefix that are not settings.
ENV_NOT_SETTINGS = ("PANELSRV_CONFIG", "PANELSRV_TEST_")

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[float, Meta(gt=0)]
Count = Annotated[int, Meta(ge=1)]


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # -- storage --
    database_url: str = ""
    data_dir: str = "./var"
    redis_url: str = ""
    pool_size: Count = 8
    # -- listeners --
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: Annotated[int, Meta(ge=0, le=256)] = 0
    ops_host: str = "127.0.0.1"
    ops_port: Port = 9090
    worker_ops_port: Port = 0
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    client_ip_header: Literal["x-forwarded-for", "x-real-ip"] = "x-forwarded-for"
    # -- HTTP limits --
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024
    header_timeout: Positive = 10.0
    body_timeout: Positive = 30.0
    keepalive_timeout: Positive = 60.0
    max_connections: Count = 10_000
    max_connections_per_ip: Count = 256
    shutdown_grace: Positive = 10.0
    # -- logging --
    log_level: str = "info"
    access_log: bool = False
    # -- API --
    default_panel: str = ""
    sign_max_skew: Count = 300
    key_cache_ttl: Positive = 300.0
    negative_key_ttl: Positive = 5.0
    # -- account pages --
    cookie_secure: bool | Literal["auto"] = "auto"
    session_idle_timeout: Positive = 1800.0
    session_lifetime: Positive = 43200.0
    login_max_failures: Count = 10
    login_lock_seconds: Positive = 900.0
    # -- limits --
    ip_rate: Positive = 100.0
    ip_burst: Count = 100
    user_rate: Positive = 50.0
    user_burst: Count = 100
    strike_limit: Count = 10
    strike_window: Positive = 60.0
    block_seconds: Positive = 300.0
    never_block: list[str] = msgspec.field(default_factory=list)
    limit_sync_interval: Positive = 0.1
    limit_sync_timeout: Positive = 0.5
    limit_max_keys: Annotated[int, Meta(ge=1024)] = 65_536
    redis_prefix: str = "panelsrv"
    # -- worker --
    sync_interval: Positive = 60.0
    price_sync_interval: Positive = 3600.0
    provider_timeout: Positive = 30.0
    provider_connect_timeout: Positive = 10.0
    provider_max_concurrency: Count = 8
    provider_rate: Annotated[float, Meta(ge=0)] = 0.0
    provider_breaker_threshold: Count = 5
    provider_breaker_cooldown: Positive = 30.0
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    webhook_timeout: Positive = 10.0
    webhook_slow: Positive = 5.0
    webhook_concurrency: Count = 20
    webhook_endpoint_concurrency: Count = 4
    webhook_user_concurrency: Count = 8
    webhook_breaker_threshold: Count = 5
    webhook_breaker_cooldown: Positive = 60.0


class ConfigError(ValueError):
    """A setting is unknown or mistyped; the message names it and where it came from."""


_FIELDS = {f.name: f for f in msgspec.structs.fields(Config)}


def _is_list(name: str) -> bool:
    return "list" in str(_FIELDS[name].type)


def _validate(layer: Mapping[str, Any], source: str, names: Mapping[str, str]) -> None:
    try:
        msgspec.convert(dict(layer), Config, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        for name in layer:
            if f"`$.{name}`" in text or f"`{name}`" in text:
                raise ConfigError(f"setting {names.get(name, name)} ({source}): {text}") from None
        raise ConfigError(f"{source}: {text}") from None


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    names: dict[str, str] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var.startswith(ENV_NOT_SETTINGS):
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {var} (environment)")
        layer[name] = _split(value) if _is_list(name) else value
        names[name] = var
    _validate(layer, "environment", names)
    return layer


def from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            layer = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for name in layer:
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name} (config file {path})")
    _validate(layer, f"config file {path}", {})
    return layer


def from_args(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line values (`--port 9000`, `--set name=value`); strings are converted."""
    layer: dict[str, Any] = {}
    for name, value in pairs.items():
        name = name.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name} (command line)")
        layer[name] = _split(value) if isinstance(value, str) and _is_list(name) else value
    _validate(layer, "command line", {})
    return layer


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def load(
    args: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    path: str | None = None,
) -> Config:
    environ = os.environ if environ is None else environ
    path = path or environ.get("PANELSRV_CONFIG") or None
    merged: dict[str, Any] = {}
    if path:
        merged.update(from_file(path))
    merged.update(from_env(environ))
    merged.update(from_args(args or {}))
    # Every layer passed validation on its own, so their union does too.
    return msgspec.convert(merged, Config, strict=False)
