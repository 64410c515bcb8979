"""panelsrv.client: the API v2 client, sync and async, for resellers and for panelsrv's worker.

Imports no other room of panelsrv (only msgspec, aiohttp for `AsyncClient`, and the standard
library), so it can be vendored or installed alone. The worker's `Provider` sends every order
upstream through `AsyncClient.perform`: the code that talks to providers is this code.

    from panelsrv.client import Client, ProviderError

    with Client("https://panel.example/api/v2", "YOUR_API_KEY") as api:
        order = api.add(1234, "https://instagram.com/p/x", 1000)  # an Idempotency-Key made
        print(api.status(order).status, api.balance().balance)

    async with AsyncClient(url, key) as api:  # the same methods, awaited
        statuses = await api.status(["8842", "8843"])

Public names (stable):
- `Client(url, key, *, sign=False, timeout=30.0, connect_timeout=10.0, retry=Retry(),
  max_answer_bytes=8 MiB, headers=None, user_agent=..., ssl_context=None)` and
  `AsyncClient(url, key, *, ..., session=None, max_connections=8)`: context managers, one
  method per action:
  `services() -> list[Service]`;
  `add(service, link=None, quantity=None, *, idempotency_key=True, **fields) -> str` (the
  order id; `idempotency_key`: True makes one, a str is yours, False sends none and is then
  never retried once it may have reached the panel; `fields`: runs, interval, comments, ...
  and provider fields);
  `status(order) -> OrderStatus`, `status([ids]) -> dict[str, OrderStatus | ItemError]`
  (1 to 100 ids);
  `cancel(order | [ids], *, idempotency_key=True) -> bool | dict[str, bool | ItemError]`;
  `refill(order | [ids], *, idempotency_key=True) -> str | dict[str, str | ItemError]`;
  `refill_status(refill | [ids]) -> str | dict[str, str | ItemError]`;
  `balance() -> Balance`;
  `webhook_add(url, events=None) -> WebhookCreated` (its `secret` shown once);
  `webhooks() -> list[Webhook]`; `webhook_delete(webhook) -> bool`.
  Ids are text (panels differ; panelsrv's are digits); ints are accepted.
- Results (msgspec Structs, frozen): `Service`, `OrderStatus`, `ItemError` (one id of a
  list failed: `.message`), `Balance`, `Webhook`, `WebhookCreated`.
- Failures: `ProviderFailure`, the base of `ProviderError` (the panel answered `{"error": m}`:
  `.message`, `.http_status`, `.kind` an `ErrorKind`) and `ProviderUnavailable` (no usable
  answer: `.reason`, `.maybe_sent`, `.retry_after`, `.transient`), and `UnreadableAnswer` (an
  answer of no known shape). `ValueError`: the caller's mistake, nothing sent.
- `Retry(attempts=4, total=60.0, backoff=0.5, max_backoff=8.0)`, `NO_RETRY`: transient
  failures (timeouts, dropped connections, 429, 5xx) are retried with jittered backoff, or
  after the panel's `Retry-After`; a call that may have reached the panel only when it is
  idempotent (an `add` or `refill` with its key, every read); a refusal never.
- `verify_webhook(secret, body, signature_header, *, tolerance=300, now=None) -> bool` and
  `sign_webhook(secret, timestamp, body) -> str`: the `X-Panel-Signature` of a delivery;
  `SIGNATURE_HEADER`.
- `sign_v2(key, fields) -> str`, `canonical_v2(fields) -> str`: the request signature.
- `Core`, `Call`: the sans-IO layer under both clients (building calls, reading answers), for
  a caller with its own transport: `Client.perform(call)` / `AsyncClient.perform(call)`.
"""

from panelsrv.client.aio import AsyncClient
from panelsrv.client.answers import (
    MAX_BATCH,
    Balance,
    ErrorKind,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderFailure,
    ProviderUnavailable,
    Service,
    UnreadableAnswer,
    Webhook,
    WebhookCreated,
)
from panelsrv.client.blocking import Client
from panelsrv.client.core import NO_RETRY, Call, Core, Retry, canonical_v2, sign_v2
from panelsrv.client.webhook import SIGNATURE_HEADER, sign_webhook, verify_webhook

__all__ = [
    "MAX_BATCH",
    "NO_RETRY",
    "SIGNATURE_HEADER",
    "AsyncClient",
    "Balance",
    "Call",
    "Client",
    "Core",
    "ErrorKind",
    "ItemError",
    "OrderStatus",
    "ProviderError",
    "ProviderFailure",
    "ProviderUnavailable",
    "Retry",
    "Service",
    "UnreadableAnswer",
    "Webhook",
    "WebhookCreated",
    "canonical_v2",
    "sign_v2",
    "sign_webhook",
    "verify_webhook",
]
