"""`panelsrv` console script: argparse subcommands; parses, loads config, calls. No logic.

Exit status: 0 success, 2 bad usage or bad input (one line on stderr, nothing written),
1 any other failure. With `--json`, exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson
import uvloop

from panelsrv import __version__, commands, config, panelconf, server, workerproc
from panelsrv.sim import provider as sim
from panelsrv.store import accounts, admin, db, keys, orders


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _settings_parent() -> _Parser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("configuration (command line > PANELSRV_* env > file)")
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (config/panelsrv.toml documents every setting)",
    )
    group.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL; unset: embedded PostgreSQL under <data_dir>/pgdata",
    )
    group.add_argument(
        "--data-dir", metavar="DIR", help="where the embedded database lives (default ./var)"
    )
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any setting, e.g. --set ip_rate=50 (repeatable)",
    )
    common.add_argument("--json", action="store_true", help="print exactly one JSON document")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _settings_parent()
    parser = _Parser(prog="panelsrv", description="SMM panel API v2 server and admin tool.")
    parser.add_argument("--version", action="version", version=f"panelsrv {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], **kwargs)

    def group(name: str, help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        return p.add_subparsers(
            dest="subcommand", metavar="SUBCOMMAND", required=True, parser_class=_Parser
        )

    def subcommand(parent: Any, name: str, help: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, parents=[common])

    p = command(
        "run",
        "all-in-one for development and demos: embedded DB, demo data, a "
        "simulated provider, the API and the worker in one process",
    )
    p.add_argument("--port", type=int, help="API port (default 8080)")
    p.set_defaults(runner=server.run_all)

    p = command("serve", "the API server (production): N processes share the port")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default 8080)")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.set_defaults(runner=server.run_serve)

    p = command("worker", "dispatch to providers, status/refill sync, webhooks (run 1..M)")
    p.add_argument("--sync-interval", type=float, help="seconds between polls of one order")
    p.set_defaults(runner=workerproc.run_worker)

    command("migrate", "apply pending migrations").set_defaults(func=commands.migrate)

    panel = group("panel", "panels (tenants), selected by the request's Host")
    p = subcommand(panel, "add", "add a panel")
    p.add_argument("--domain", required=True)
    p.add_argument("--currency", default="USD")
    p.set_defaults(func=commands.panel_add)
    p = subcommand(
        panel,
        "set",
        f"set a panel setting ({', '.join(panelconf.SETTING_NAMES)}, currency); "
        "accept_get true lets clients that cannot POST send GET /api/v2?action=...&key=...",
    )
    p.add_argument("--domain", required=True)
    p.add_argument("name", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.set_defaults(func=commands.panel_set)
    p = subcommand(
        panel,
        "fx",
        "offer shared services priced in another currency, at an exchange rate you set",
    )
    p.add_argument("--domain", required=True)
    p.add_argument("--currency", required=True, help="the currency those services are priced in")
    rate_or_remove = p.add_mutually_exclusive_group(required=True)
    rate_or_remove.add_argument(
        "--rate", help="units of the panel's currency per unit of --currency, e.g. 0.92"
    )
    rate_or_remove.add_argument(
        "--remove", action="store_true", help="stop offering services priced in --currency"
    )
    p.set_defaults(func=commands.panel_fx)

    user = group("user", "users")
    p = subcommand(user, "add", "add a user (and their wallet) to a panel")
    p.add_argument("--email", required=True)
    p.add_argument("--domain", help="the user's panel (needed when there are several)")
    p.add_argument("--balance", default="0", help="opening balance, e.g. 10.00 (a ledger credit)")
    p.add_argument("--discount", default="0", help="discount in percent on base rates, e.g. 5")
    p.add_argument(
        "--tier", help="one of the panel's rate-limit tiers (default: the server's user_rate)"
    )
    p.set_defaults(func=commands.user_add)
    p = subcommand(
        user, "set-tier", "put a user on a rate-limit tier, or back on the default (at once)"
    )
    p.add_argument("--email", required=True)
    tier_or_default = p.add_mutually_exclusive_group(required=True)
    tier_or_default.add_argument("--tier", help="the name of one of the user's panel's tiers")
    tier_or_default.add_argument(
        "--default",
        action="store_true",
        help="no tier: the server's user_rate/user_burst and the panel's order ceiling",
    )
    p.set_defaults(func=commands.user_set_tier)
    p = subcommand(
        user,
        "invite",
        "print a one-time link through which the user sets a password for the account pages: "
        f"valid {accounts.INVITE_TTL // 3600} h, single use, a new one voids earlier unused "
        "ones; it also resets a forgotten password (and ends every session of the user)",
    )
    p.add_argument("--email", required=True)
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="where the pages are reached, http(s)://host[:port][/path], no query "
        "(default: https://<the user's panel domain>)",
    )
    p.set_defaults(func=commands.user_invite)

    tier = group(
        "tier",
        "rate-limit tiers: per-user requests/s and burst, and an order ceiling, per panel",
    )
    for name, text in (
        ("add", "add a tier to a panel"),
        ("set", "change a tier's limits (every server applies them at once)"),
    ):
        adding = name == "add"
        p = subcommand(tier, name, text)
        p.add_argument("--name", required=True, help="the tier's name, e.g. basic")
        p.add_argument(
            "--rate", type=float, required=adding, help="requests per second per user, e.g. 5"
        )
        p.add_argument(
            "--burst", type=int, required=adding, help="requests a user may send at once"
        )
        p.add_argument(
            "--orders",
            type=int,
            default=panelconf.ORDER_CEILING if adding else None,
            help=f"orders per user per minute, at most {panelconf.ORDER_CEILING}; the lower of "
            f"this and the panel's sec_order_max_per_min applies"
            + (f" (default {panelconf.ORDER_CEILING})" if adding else ""),
        )
        p.add_argument("--domain", help="the tier's panel (needed when there are several)")
        p.set_defaults(func=commands.tier_add if adding else commands.tier_set)
    p = subcommand(tier, "list", "tiers with their limits and how many users each has")
    p.add_argument("--domain", help="only this panel's tiers")
    p.set_defaults(func=commands.tier_list)

    key = group("key", "API keys")
    p = subcommand(key, "create", "create a key; prints the raw key once")
    p.add_argument("--email", required=True)
    p.add_argument(
        "--label",
        default="",
        help=f"a name for the key, at most {keys.MAX_LABEL_LENGTH} printable characters",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ADDRESSES",
        help="client addresses or CIDRs allowed to use the key, comma separated, repeatable "
        f"(at most {keys.MAX_ALLOWED}; default: any address)",
    )
    p.set_defaults(func=commands.key_create)
    p = subcommand(
        key, "list", "a user's keys by prefix (active first): label, allowed addresses, last use"
    )
    p.add_argument("--email", required=True)
    p.set_defaults(func=commands.key_list)
    p = subcommand(key, "revoke", "revoke a key by its prefix (immediate on every server)")
    p.add_argument("--prefix", required=True)
    p.set_defaults(func=commands.key_revoke)

    funds = group("funds", "wallet movements")
    p = subcommand(funds, "add", "a ledger credit (a negative amount debits, never below zero)")
    p.add_argument("--email", required=True)
    p.add_argument("--amount", required=True)
    p.add_argument("--memo")
    p.set_defaults(func=commands.funds_add)

    provider = group("provider", "upstream providers (API v2)")
    p = subcommand(provider, "add", "add an upstream provider")
    p.add_argument("--name", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument(
        "--currency", default="USD", help="the currency of the provider's rates (default USD)"
    )
    p.add_argument(
        "--honours-idempotency",
        action="store_true",
        help="a resend with the same Idempotency-Key returns the same order there (another "
        "panelsrv does): orders whose send had an unknown outcome are resent, not held for you",
    )
    p.set_defaults(func=commands.provider_add)
    p = subcommand(provider, "set", "say whether a provider honours Idempotency-Key")
    p.add_argument("--provider", required=True, help="provider name or id")
    p.add_argument(
        "--honours-idempotency",
        action=argparse.BooleanOptionalAction,
        required=True,
        help="--honours-idempotency: resend after an unknown outcome; "
        "--no-honours-idempotency: hold such orders for you (the default for new providers)",
    )
    p.set_defaults(func=commands.provider_set)
    p = provider.add_parser(
        "sim",
        help="a simulated upstream provider (API v2) for demos, benchmarks and tests",
        description="A simulated upstream provider speaking API v2, with fault injection.",
    )
    sim.add_arguments(p)
    p.set_defaults(standalone=sim.run_sim)

    service = group("service", "the service catalog")
    p = subcommand(service, "add", "add one service")
    p.add_argument("--name", required=True)
    p.add_argument("--type", default="default")
    p.add_argument("--rate", required=True, help="price per 1000 units, e.g. 0.45")
    p.add_argument("--min", type=int, required=True)
    p.add_argument("--max", type=int, required=True)
    p.add_argument("--category", default="")
    p.add_argument("--provider", help="provider name or id")
    p.add_argument("--provider-service", help="the service id at the provider")
    p.add_argument("--dripfeed", action="store_true")
    p.add_argument("--refill", action="store_true")
    p.add_argument("--cancel", action="store_true")
    p.add_argument("--avg-time", type=int, default=0, help="average completion time, seconds")
    p.add_argument("--domain", help="offer it only on this panel")
    p.add_argument("--local-id", type=int, help="the id the panel's customers see")
    p.add_argument(
        "--currency",
        help="a shared service's currency (default: its provider's, else USD); "
        "a panel's own service is priced in the panel's currency",
    )
    p.set_defaults(func=commands.service_add)
    p = subcommand(
        service,
        "import",
        "copy a provider's services with a markup; the worker keeps their prices in sync",
    )
    p.add_argument("--provider", required=True, help="provider name or id")
    p.add_argument("--markup", default="0", help="percent added to the provider's rates")
    p.add_argument("--category", help="only this category")
    p.set_defaults(func=commands.service_import)

    order = group("order", "orders, as the operator sees them")
    p = subcommand(
        order,
        "list",
        "orders, newest first; --status Error lists those a provider reported as failed "
        "(refunded in full)",
    )
    p.add_argument("--status", choices=orders.ORDER_STATUSES, help="only orders in this status")
    p.add_argument("--provider", help="only this provider's orders (name or id)")
    p.add_argument("--domain", help="only this panel's orders")
    p.add_argument(
        "--limit", type=int, default=100, help=f"at most this many (1..{admin.MAX_LISTED})"
    )
    p.add_argument(
        "--held",
        action="store_true",
        help="only orders held for you: a send of unknown outcome to a provider not known to "
        "honour Idempotency-Key; check upstream, then resend, attach or fail each",
    )
    p.set_defaults(func=commands.order_list)
    for action, text in (
        ("resend", "a held order is not at the provider: send it again"),
        ("attach", "a held order is at the provider: record its upstream id"),
        ("fail", "give a held order up: canceled, its charge refunded in full (once)"),
    ):
        p = subcommand(order, action, text)
        p.add_argument("--order", type=int, required=True)
        if action == "attach":
            p.add_argument("--upstream-id", required=True, help="the provider's id of the order")
        p.set_defaults(func=commands.order_resolve, action=action)

    rate = group("rate", "user-specific prices")
    p = subcommand(rate, "set", "set a user's price for a service")
    p.add_argument("--email", required=True)
    p.add_argument("--service", type=int, required=True)
    p.add_argument("--rate", required=True)
    p.set_defaults(func=commands.rate_set)

    command("audit", "check the ledger invariants; exit 1 on any violation").set_defaults(
        func=commands.audit
    )
    return parser


def load_config(args: argparse.Namespace) -> config.Config:
    layer: dict[str, Any] = {}
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE")
        layer[name.strip()] = value
    for name in ("database_url", "data_dir", "host", "port", "workers", "sync_interval"):
        value = getattr(args, name, None)
        if value is not None:
            layer[name] = value
    return config.load(layer, path=args.config)


async def _run_command(args: argparse.Namespace, cfg: config.Config) -> tuple[Any, str]:
    url = db.resolve_url(cfg.database_url, cfg.data_dir)
    conn = await db.open_migrated(url)
    try:
        return await args.func(args, conn)
    finally:
        await conn.close()


def _fail(message: str, status: int) -> NoReturn:
    print(f"panelsrv: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "standalone", None) is not None:
            sys.exit(args.standalone(args))
        cfg = load_config(args)
    except (UsageError, config.ConfigError) as exc:
        _fail(str(exc).removeprefix("panelsrv: "), 2)
    if getattr(args, "runner", None) is not None:
        logging.getLogger("panelsrv").setLevel(cfg.log_level.upper())
        try:
            sys.exit(args.runner(cfg))
        except db.DatabaseError as exc:
            _fail(str(exc), 1)
    try:
        doc, text = uvloop.run(_run_command(args, cfg))
    except admin.InputError as exc:
        _fail(str(exc), 2)
    except commands.CommandFailed as exc:
        _fail(str(exc), 1)
    except db.DatabaseError as exc:
        _fail(str(exc), 1)
    except (TimeoutError, OSError) as exc:
        _fail(f"{type(exc).__name__}: {exc}", 1)
    print(orjson.dumps(doc).decode() if args.json else text)
    if args.command == "audit" and not doc["ok"]:
        sys.exit(1)
