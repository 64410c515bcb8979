"""The API: one framed request -> (status, body, extra headers). No transport, no parsing of
bytes on the socket; the protocol hands us its reused Request object.

Imports api (decode, sign, actions, respond), store (key cache, catalog), errors and panelconf.
Order of work, cheapest and most decisive first: panel from Host -> a GET's admission (the
panel's `accept_get`) -> decode -> key (of this panel; used from one of its allowed client
addresses when it has a list, else it counts as invalid) -> sign -> the key noted as used
(`usage`) -> per-user cap (the user's tier's, carried by the cached principal) -> the action.
A GET the panel takes is decoded exactly as a POST whose form body is its query string, and
goes the same way from there (limits, strikes, answers). Every failure to authenticate is
reported to `strike` (the limits layer turns strikes into IP blocks). Errors are rendered here
and only here: the table's status, `legacy_errors` (business errors as 200 for old SDKs),
Retry-After on 429/503, and a generic 500 with the request id in the log for anything
unexpected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from panelsrv.api import respond, sign
from panelsrv.api.actions import Action, Services
from panelsrv.api.decode import Decoded, decode_request
from panelsrv.errors import ERROR_BODIES, ApiError, Code, retry_after_header
from panelsrv.guard import retry_after
from panelsrv.panelconf import Tier
from panelsrv.store import db
from panelsrv.store.catalog import Catalog, Panel
from panelsrv.store.keycache import KeyCache, Principal
from panelsrv.store.pool import Pool

log = logging.getLogger("panelsrv.api")

UNAVAILABLE_RETRY_AFTER = 5

Answer = tuple[int, bytes, bytes]  # status, body, extra header lines (the transport's contract)


class Request(Protocol):
    method: bytes  # POST, or GET (the transport hands us no other)
    client_ip: str
    host: str
    content_type: bytes
    query: bytes
    idempotency_key: str | None
    body: bytes
    action: str  # set here, for the transport's per-action metrics and access log

    @property
    def request_id(self) -> str: ...


class CatalogHolder(Protocol):
    catalog: Catalog


class KeyUsage(Protocol):
    """Where the use of an admitted key is noted (store.keys.Usage: a set add, written later
    in batches, never a write per request)."""

    def note(self, key_id: int) -> None: ...


def _retry_after(seconds: float) -> bytes:
    return retry_after_header(retry_after(seconds))


UNAVAILABLE_ANSWER: Answer = (
    503,
    ERROR_BODIES[Code.UNAVAILABLE],
    retry_after_header(UNAVAILABLE_RETRY_AFTER),
)


# A GET on a panel without `accept_get` (or on no panel): the transport's own 405, which
# `legacy_errors` leaves alone like the 405 of any other method.
GET_REFUSED: Answer = (405, ERROR_BODIES[Code.USE_POST], b"Allow: POST\r\n")


def unavailable(req: Request) -> Answer:
    """What every request gets while the process cannot reach the database yet (it started
    while PostgreSQL was down): the answer of a request that met the outage mid-way."""
    return UNAVAILABLE_ANSWER


class Api:
    __slots__ = (
        "_clock",
        "_default_panel",
        "_keys",
        "_pool",
        "_sign_max_skew",
        "_state",
        "_strike",
        "_usage",
        "_user_refused",
        "_user_wait",
        "_webhook_allow_http",
        "_webhook_allow_private",
    )

    def __init__(
        self,
        *,
        pool: Pool,
        state: CatalogHolder,
        keys: KeyCache,
        default_panel: str,
        sign_max_skew: int,
        strike: Callable[[str], None],
        user_wait: Callable[[int, Tier | None], float],
        usage: KeyUsage,
        user_refused: bytes = ERROR_BODIES[Code.TOO_MANY_REQUESTS],
        clock: Callable[[], float] = time.time,
        webhook_allow_http: bool = False,
        webhook_allow_private: bool = False,
    ) -> None:
        self._pool = pool
        self._state = state
        self._keys = keys
        self._default_panel = default_panel
        self._sign_max_skew = sign_max_skew
        self._strike = strike
        self._user_wait = user_wait
        self._usage = usage
        # The 429 of the server's per-user cap (users without a tier), naming it; built once.
        self._user_refused = user_refused
        self._clock = clock
        # The `webhook_allow_*` settings: `webhook_add` must accept what the worker delivers to.
        self._webhook_allow_http = webhook_allow_http
        self._webhook_allow_private = webhook_allow_private

    def handle(self, req: Request) -> Answer | Awaitable[Answer]:
        """The answer now when no I/O is needed (errors, refusals, `services` for a cached
        key), else an awaitable of it: the protocol creates a task only for those."""
        catalog = self._state.catalog
        panel = catalog.panel_for_host(req.host, self._default_panel)
        try:
            if req.method != b"POST":
                if panel is None or not panel.settings.accept_get:
                    return GET_REFUSED
                if req.body:  # which would count, the body or the query? Neither guess.
                    raise ApiError(Code.GET_WITH_BODY)
            decoded = decode_request(req.body, req.content_type, req.query)
            req.action = decoded.tag
            if panel is None:  # no key can be valid here, so no lookup either
                self._strike(req.client_ip)
                raise ApiError(Code.INVALID_KEY)
            hit, principal = self._keys.cached(decoded.action.key)
            if not hit:
                return self._resolve_then_respond(req, panel, catalog, decoded)
            ctx = self._admit(req, panel, catalog, decoded, principal)
            if type(decoded.action) is Services:
                return self._final(panel, *respond.services(ctx))
        except Exception as exc:
            return self._failure(req, panel, exc)
        return self._respond(req, ctx, decoded.action)

    async def _resolve_then_respond(
        self, req: Request, panel: Panel, catalog: Catalog, decoded: Decoded
    ) -> Answer:
        try:
            principal = await self._keys.resolve(decoded.action.key)
            ctx = self._admit(req, panel, catalog, decoded, principal)
        except Exception as exc:
            return self._failure(req, panel, exc)
        return await self._respond(req, ctx, decoded.action)

    async def _respond(self, req: Request, ctx: respond.Context, action: Action) -> Answer:
        try:
            status, body = await respond.respond(ctx, action)
        except Exception as exc:
            return self._failure(req, ctx.panel, exc)
        return self._final(ctx.panel, status, body)

    def _admit(
        self,
        req: Request,
        panel: Panel,
        catalog: Catalog,
        decoded: Decoded,
        principal: Principal | None,
    ) -> respond.Context:
        """Key (its panel, its allowed addresses), signature and per-user cap; the context the
        action runs in, or ApiError. A key that passed its signature is noted as used, even
        when the per-user cap then refuses the request."""
        action = decoded.action
        if (
            principal is None
            or principal.panel_id != panel.id
            or (principal.allowed and not principal.admits(req.client_ip))
        ):  # a key used from outside its allowed addresses is as good as none
            self._strike(req.client_ip)
            raise ApiError(Code.INVALID_KEY)
        if action.sign is not None and not sign.verify_request(
            action.key,
            decoded.fields,
            action.sign,
            action.timestamp,
            self._clock(),
            self._sign_max_skew,
            action.sign_version,
        ):
            self._strike(req.client_ip)
            raise ApiError(Code.INVALID_SIGNATURE)
        self._usage.note(principal.key_id)
        tier = principal.tier
        wait = self._user_wait(principal.user_id, tier)
        if wait > 0:
            body = self._user_refused if tier is None else tier.rate_body
            raise ApiError(Code.TOO_MANY_REQUESTS, retry_after=wait, prebuilt=body)
        return respond.Context(
            self._pool,
            catalog,
            panel,
            principal,
            req.idempotency_key,
            self._webhook_allow_http,
            self._webhook_allow_private,
        )

    def _failure(self, req: Request, panel: Panel | None, exc: Exception) -> Answer:
        """Every error becomes its answer here, and only here."""
        extra = b""
        if isinstance(exc, ApiError):
            status, body = exc.status, exc.body()
            if exc.retry_after is not None:
                extra = _retry_after(exc.retry_after)
        elif isinstance(exc, db.UNAVAILABLE):
            # The pool logs the outage once (outages.Outage); a line per request would flood.
            log.debug("request %s: database unavailable: %s", req.request_id, exc)
            status, body, extra = UNAVAILABLE_ANSWER
        else:
            log.error(
                "request %s: unexpected error in %s", req.request_id, req.action or "?",
                exc_info=exc,
            )  # fmt: skip
            status, body = 500, ERROR_BODIES[Code.INTERNAL]
        return self._final(panel, status, body, extra)

    @staticmethod
    def _final(panel: Panel | None, status: int, body: bytes, extra: bytes = b"") -> Answer:
        """`legacy_errors`: business errors (not 429, not 5xx) as HTTP 200, body unchanged."""
        if (
            400 <= status < 500
            and status != 429
            and panel is not None
            and panel.settings.legacy_errors
        ):
            status = 200
        return status, body, extra
