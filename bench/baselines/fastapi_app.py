"""What most Python teams would write instead: FastAPI on uvicorn, Form(...) parameters, pydantic
models, an asyncpg pool, and the same statements as panelsrv.

    python -m bench.baselines.fastapi_app --port P --database-url URL

Imports fastapi, pydantic, uvicorn and panelsrv (the statements, money arithmetic and the pool
settings, so only the framework differs). Deliberately idiomatic, not tuned: the key cache is a
dict in front of the same principal lookup panelsrv does (so both do one statement per request
once warm); services are rebuilt as pydantic models per request; errors are HTTPException.
Only the actions the benchmark drives exist (services, balance, status, add).
"""

from __future__ import annotations

import argparse
import hashlib
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from panelsrv import money
from panelsrv.store import db, keycache, ledger, orders

DATABASE_URL = ""
POOL_SIZE = 8


class ServiceOut(BaseModel):
    service: int
    name: str
    type: str
    category: str
    rate: str
    min: int
    max: int
    dripfeed: bool
    refill: bool
    cancel: bool
    avg_time: int


class BalanceOut(BaseModel):
    balance: str
    currency: str


class StatusOut(BaseModel):
    charge: str
    start_count: str
    status: str
    remains: str
    currency: str


class AddOut(BaseModel):
    order: int


class Principal(BaseModel):
    user_id: int
    panel_id: int
    discount_bp: int
    overrides: dict[int, int]


state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    pool = await db.create_pool(DATABASE_URL, POOL_SIZE)
    state["pool"] = pool
    state["keys"] = {}
    state["panels"] = {r["domain"]: dict(r) for r in await pool.fetch("SELECT * FROM panels")}
    services = [dict(r) for r in await pool.fetch(
        "SELECT * FROM services WHERE active AND NOT hidden ORDER BY local_id, id")]
    state["services"] = services
    state["local"] = {(s["panel_id"], s["local_id"]): s for s in services}
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


def error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


@app.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def authenticate(key: str, panel: dict[str, Any]) -> Principal:
    cache: dict[str, Principal | None] = state["keys"]
    if key in cache:
        principal = cache[key]
    else:
        digest = hashlib.sha256(key.encode()).digest()
        row = await state["pool"].fetchrow(keycache.LOOKUP_PRINCIPAL, digest)
        principal = None if row is None else Principal(
            user_id=row[1], panel_id=row[2], discount_bp=row[3],
            overrides={int(s): int(r) for s, r in row[4]})
        cache[key] = principal
    if principal is None or principal.panel_id != panel["id"]:
        raise error(401, "Invalid API key")
    return principal


def status_out(row: asyncpg.Record, currency: str) -> StatusOut:
    return StatusOut(charge=money.format(row["charge"]), start_count=str(row["start_count"]),
                     status=row["status"], remains=str(row["remains"]), currency=currency)


@app.post("/api/v2")
async def api(
    request: Request,
    key: str = Form(...),
    action: str = Form(...),
    order: int | None = Form(None),
    orders_: str | None = Form(None, alias="orders"),
    service: int | None = Form(None),
    link: str | None = Form(None),
    quantity: int | None = Form(None),
    idempotency_key: str | None = Form(None),
) -> Any:
    panel = state["panels"].get(request.headers.get("host", "").split(":")[0])
    if panel is None:
        raise error(401, "Invalid API key")
    principal = await authenticate(key, panel)
    pool = state["pool"]
    if action == "balance":
        value = await pool.fetchval(ledger.BALANCE, principal.user_id)
        return BalanceOut(balance=money.format(value or 0), currency=panel["currency"])
    if action == "services":
        return [
            ServiceOut(
                service=s["local_id"], name=s["name"], type=s["type"], category=s["category"],
                rate=money.format(money.user_rate(s["rate"], principal.discount_bp,
                                                  principal.overrides.get(s["id"]))),
                min=s["min_qty"], max=s["max_qty"], dripfeed=s["dripfeed"],
                refill=s["refill"], cancel=s["cancel"], avg_time=s["avg_time"])
            for s in state["services"] if s["panel_id"] == panel["id"]
        ]
    if action == "status":
        if orders_ is not None:
            ids = [int(i) for i in orders_.split(",")]
            found = {r[0]: r for r in await pool.fetch(
                orders.ORDERS_STATUS, ids, principal.user_id)}
            return {str(i): status_out(found[i], panel["currency"]) if i in found
                    else {"error": "Incorrect order ID"} for i in ids}
        if order is None:
            raise error(400, "order: required")
        row = await pool.fetchrow(orders.ORDER_STATUS, order, principal.user_id)
        if row is None:
            raise error(400, "Incorrect order ID")
        return status_out(row, panel["currency"])
    if action == "add":
        svc = state["local"].get((panel["id"], service))
        if svc is None:
            raise error(400, "Incorrect service ID")
        if quantity is None or not svc["min_qty"] <= quantity <= svc["max_qty"]:
            raise error(400, "quantity: out of range")
        rate = money.user_rate(svc["rate"], principal.discount_bp,
                               principal.overrides.get(svc["id"]))
        fingerprint = hashlib.sha256(f"{service}:{link}:{quantity}".encode()).digest()
        row = await pool.fetchrow(
            ledger.PLACE_ORDER, principal.user_id, panel["id"], svc["id"], svc["provider_id"],
            money.charge(rate, quantity), link or "", quantity, 1, 0, {}, 30,
            idempotency_key, fingerprint if idempotency_key else b"", False,
            b'{"error":"Not enough funds on balance"}')
        if row["outcome"] not in ("ok", "replay"):
            raise error(402 if row["outcome"] == "funds" else 429, row["outcome"])
        return AddOut(order=row["order_id"])
    raise error(400, "Incorrect action")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    DATABASE_URL = args.database_url
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", workers=1)
