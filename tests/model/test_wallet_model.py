"""A stateful model of the wallet (issue 18): random programs of store calls against a real
PostgreSQL, the database compared after every step with a plain-Python model.

Each program gets new users (with discounts) on one shared panel, shared services (different
rates, some free, with and without a provider, cancel and refill) and one database and pool for
all programs. Steps: admin credits and debits (an overdraw refused, nothing changes); adds
with and without idempotency keys (a replay with the same fields answers the same order, or the
same refusal; other fields are refused as a mismatch), the duplicate-link guard, orders over the
balance (refused); cancels and refills (single and multi, keyed, other users' and unknown ids);
the worker's dispatch (claim, renew, sent, retry maybe-sent or not, fail) and provider reports
through jobs.apply_order_statuses / apply_refill_statuses (Partial with remains, Canceled,
Refunded, Error, Completed, repeated and out of order). After every step: every balance, order
(status, remains, start_count, charge, refund, upstream id, cancel request) and refill agrees
with the model; at the end of each program the ledger's entries of its users are exactly the
model's, in order, chained, and `status` shows charge net of refund; `ledger.audit` is clean at
the end. `make test` runs about 2,000 derandomized programs; `make model` MODEL_PROGRAMS
examples (about 1.5 programs each) from a seed.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from panelsrv import money
from panelsrv.store import admin, db, jobs, ledger, orders
from tests.store.helpers import new_panel, new_provider, new_service, unique

LONG = "MODEL_PROGRAMS" in os.environ
# Hypothesis runs about 1.5 programs per example asked for (measured: 1,400 -> about 2,070).
PROGRAMS = int(os.environ.get("MODEL_PROGRAMS") or 1400)
STEPS = int(os.environ.get("MODEL_STEPS") or 15)
FINAL_ACTIVE = ("Pending", "In progress")
REPORTED = ["In progress", "Completed", "Partial", "Canceled", "Refunded", "Error", "Pending"]
REFILL_REPORTED = ["In progress", "Completed", "Rejected", "Error", "Pending"]


def rank(status: str) -> int:
    return {"Pending": 0, "In progress": 1}.get(status, 2)


@dataclass
class Service:
    id: int
    rate: int
    provider: bool
    cancel: bool
    refill: bool


@dataclass
class User:
    id: int
    email: str
    discount_bp: int
    balance: int
    entries: list[tuple[str, int, int | None]] = field(default_factory=list)


@dataclass
class Job:
    attempt: int = 0
    leased: bool = False
    ambiguous: bool = False


@dataclass
class Order:
    id: int
    user: int
    service: Service
    charge: int
    total: int
    link: str
    status: str = "Pending"
    remains: int = 0
    start_count: int = 0
    refunded: int = 0
    upstream: str | None = None
    cancel_requested: bool = False
    job: Job | None = None
    attempts: list[jobs.Job] = field(default_factory=list)
    renewed: set[int] = field(default_factory=set)


class World:
    loop: uvloop.Loop
    conn: object
    pool: object
    domain: str
    services: list[Service]
    programs = 0
    steps = 0


ORDER_ROWS = """
SELECT o.id, o.status, o.remains, o.start_count, o.charge, o.refunded, o.upstream_id,
       o.cancel_requested, x.attempts, x.lease_until IS NOT NULL, x.ambiguous
  FROM orders o LEFT JOIN outbox x ON x.order_id = o.id AND x.kind = 'dispatch'
 WHERE o.user_id = ANY($1::bigint[])
"""
BALANCES = "SELECT user_id, balance FROM wallets WHERE user_id = ANY($1::bigint[])"
REFILLS = "SELECT id, status FROM refills WHERE user_id = ANY($1::bigint[])"
ENTRIES = """
SELECT user_id, kind, amount, order_id, balance_before, balance_after FROM ledger_entries
 WHERE user_id = ANY($1::bigint[]) ORDER BY id
"""

idx = st.integers(0, 1 << 16)


class WalletModel(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        self.w = self.world
        self.w.programs += 1
        self.users: list[User] = []
        self.orders: dict[int, Order] = {}
        self.refills: dict[int, str] = {}  # refill id -> status
        self.refills_of: dict[int, list[int]] = {}
        self.idem: dict[tuple[int, str], tuple[bytes, tuple]] = {}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.w.loop.run_until_complete(coro)

    def user(self, i: int) -> User:
        return self.users[i % len(self.users)]

    def pick(self, i: int, which: list[int]) -> Order:
        return self.orders[which[i % len(which)]]

    def credit(self, user: User, kind: str, amount: int, order: int | None) -> None:
        user.balance += amount
        user.entries.append((kind, amount, order))

    # -- setup -----------------------------------------------------------------------------

    @initialize(
        users=st.lists(
            st.tuples(
                st.sampled_from(["0", "0.5", "3", "10"]), st.sampled_from(["0", "5", "12.5"])
            ),
            min_size=2, max_size=3,
        )
    )  # fmt: skip
    def make_users(self, users: list[tuple[str, str]]) -> None:
        for balance, discount in users:
            email = unique("m") + "@example.test"
            ref, opening = self.run(
                admin.add_user(self.w.conn, email, self.w.domain, balance, discount)
            )
            u = User(ref.id, email, money.parse_percent_bp(discount), 0)
            if opening:
                self.credit(u, "credit", opening, None)
            self.users.append(u)

    # -- money -----------------------------------------------------------------------------

    @rule(u=idx, amount=st.sampled_from(["-5", "-1", "-0.3", "0.5", "1", "3", "10"]))
    def funds(self, u: int, amount: str) -> None:
        self.w.steps += 1
        user = self.user(u)
        units = money.parse(amount, allow_negative=True)
        try:
            self.run(admin.add_funds(self.w.conn, user.email, amount, "model"))
            done = True
        except admin.InputError:
            done = False
        assert done == (user.balance + units >= 0)
        if done:
            self.credit(user, "credit" if units > 0 else "debit", units, None)

    @rule(
        u=idx, s=idx, quantity=st.sampled_from([1, 7, 100, 333, 1000, 2500]),
        runs=st.sampled_from([1, 1, 1, 3]), link=st.integers(0, 2), guard=st.booleans(),
        key=st.sampled_from([None, None, "k0", "k1", "k2"]),
    )  # fmt: skip
    def add(
        self, u: int, s: int, quantity: int, runs: int, link: int, guard: bool, key: str | None
    ) -> None:
        self.w.steps += 1
        user = self.user(u)
        service = self.w.services[s % len(self.w.services)]
        url = f"https://x.test/{link}"
        charge = money.charge(money.user_rate(service.rate, user.discount_bp), quantity, runs)
        fp = hashlib.sha256(repr(("add", service.id, url, quantity, runs)).encode()).digest()
        placed = self.run(
            ledger.place_order(
                self.w.conn,
                ledger.NewOrder(
                    user_id=user.id, panel_id=self.w.panel_id, service_id=service.id,
                    provider_id=self.w.provider_id if service.provider else None, charge=charge,
                    link=url, quantity=quantity, runs=runs, order_limit=10**6,
                    idempotency_key=key, fingerprint=fp if key else b"", link_guard=guard,
                ),
            )
        )  # fmt: skip
        stored = self.idem.get((user.id, key)) if key else None
        if stored is not None:
            if stored[0] != fp:
                assert (placed.outcome, placed.order_id) == ("mismatch", None)
            else:
                assert (placed.outcome, placed.order_id) == stored[1], (placed, stored)
            return
        if guard and any(
            o.user == user.id and o.service.id == service.id and o.link == url
            and o.status in FINAL_ACTIVE for o in self.orders.values()
        ):  # fmt: skip
            assert placed.outcome == "duplicate_link"
            return
        if user.balance < charge:
            assert (placed.outcome, placed.order_id) == ("funds", None)
            if key:
                self.idem[(user.id, key)] = (fp, ("funds", None))
            return
        assert placed.outcome == "ok" and placed.order_id not in self.orders, placed
        assert placed.order_id is not None
        self.credit(user, "charge", -charge, placed.order_id)
        assert placed.balance == user.balance
        total = quantity * runs
        self.orders[placed.order_id] = Order(
            placed.order_id, user.id, service, charge, total, url, remains=total,
            job=Job() if service.provider else None,
        )  # fmt: skip
        if key:
            self.idem[(user.id, key)] = (fp, ("ok", placed.order_id))

    # -- cancel and refill -----------------------------------------------------------------

    def ids(self, picks: list[int]) -> list[int]:
        known = sorted(self.orders)
        return [known[p % len(known)] if known and p % 5 else 2**62 for p in picks]

    def refund(self, o: Order, amount: int) -> None:
        if amount > 0 and o.refunded == 0:  # once: refunded is the one refund entry's amount
            o.refunded = amount
            self.credit(next(u for u in self.users if u.id == o.user), "refund", amount, o.id)

    def cancel_unsent(self, o: Order) -> bool:
        if o.status != "Pending" or o.upstream is not None:
            return False
        o.status, o.remains, o.job = "Canceled", o.total, None
        self.refund(o, o.charge)
        return True

    def cancel_one(self, user: User, i: int) -> str | None:
        o = self.orders.get(i)
        if o is None or o.user != user.id:
            return "not_found"
        if not o.service.cancel or o.status != "Pending":
            return "cancel_unavailable"
        if o.cancel_requested:
            return None
        if o.upstream is None and (o.job is None or not (o.job.leased or o.job.ambiguous)):
            self.cancel_unsent(o)
        else:
            o.cancel_requested = True
        return None

    def refill_one(self, user: User, i: int, most: int, cooldown: int) -> tuple[str | None, bool]:
        o = self.orders.get(i)
        if o is None or o.user != user.id:
            return "not_found", False
        made = self.refills_of.get(i, [])
        if (
            not o.service.refill or o.status not in ("Completed", "Partial")
            or any(rank(self.refills[r]) < 2 for r in made) or len(made) >= most
            or (cooldown and made)
        ):  # fmt: skip
            return "refill_unavailable", False
        return None, True

    @precondition(lambda self: self.orders)
    @rule(
        u=idx, picks=st.lists(idx, min_size=1, max_size=3), single=st.booleans(),
        refill=st.booleans(), most=st.integers(1, 3), cooldown=st.sampled_from([0, 24]),
        key=st.sampled_from([None, None, "k0", "k1", "c0"]),
    )  # fmt: skip
    def action(
        self, u: int, picks: list[int], single: bool, refill: bool, most: int, cooldown: int,
        key: str | None,
    ) -> None:  # fmt: skip
        self.w.steps += 1
        user = self.user(u)
        ids = self.ids(picks)
        single = single and len(ids) == 1
        tag = "refill" if refill else "cancel"
        fp = hashlib.sha256(repr((tag, ids, single)).encode()).digest()
        if refill:
            got = self.run(
                orders.refill(
                    self.w.pool, user.id, ids, single, most, cooldown, key, fp if key else b""
                )
            )
        else:
            got = self.run(
                orders.cancel(self.w.pool, user.id, ids, single, key, fp if key else b"")
            )
        stored = self.idem.get((user.id, key)) if key else None
        if stored is not None:
            if stored[0] != fp:
                assert got.outcome == "mismatch"
            else:
                assert (got.outcome, got.order_ids, got.refill_ids, got.codes) == stored[1]
            return
        codes: list[str | None] = []
        for n, i in enumerate(ids):
            if refill:
                code, made = self.refill_one(user, i, most, cooldown)
                assert (got.refill_ids[n] is not None) == made, (got, code)  # type: ignore[index]
                if made:
                    rid = got.refill_ids[n]  # type: ignore[index]
                    assert rid is not None and rid not in self.refills
                    self.refills[rid] = "Pending"
                    self.refills_of.setdefault(i, []).append(rid)
            else:
                code = self.cancel_one(user, i)
            codes.append(code)
        assert got.outcome == "ok" and got.order_ids == ids and got.codes == codes, (got, codes)
        if key and not (single and codes[0] is not None):
            self.idem[(user.id, key)] = (fp, ("ok", ids, got.refill_ids, codes))

    # -- the worker ------------------------------------------------------------------------

    def with_job(self) -> list[int]:
        return [i for i, o in self.orders.items() if o.job is not None]

    @precondition(lambda self: any(o.job and not o.job.leased for o in self.orders.values()))
    @rule()
    def claim(self) -> None:
        self.w.steps += 1
        claimed = self.run(jobs.claim(self.w.pool, "dispatch", 100, 600))
        due = {i for i, o in self.orders.items() if o.job and not o.job.leased}
        assert {j.order_id for j in claimed} == due
        for j in claimed:
            o = self.orders[j.order_id]
            assert o.job is not None
            o.job.attempt += 1
            o.job.leased = True
            assert (j.attempt, j.ambiguous, j.cancel_requested, j.upstream_id) == (
                o.job.attempt,
                o.job.ambiguous,
                o.cancel_requested,
                o.upstream,
            )
            o.attempts.append(j)

    def attempted(self) -> list[int]:
        return [i for i, o in self.orders.items() if o.attempts]

    def attempt(self, o: Order, a: int) -> jobs.Job:
        return o.attempts[-1] if a % 3 else o.attempts[a % len(o.attempts)]

    def holds(self, o: Order, job: jobs.Job) -> bool:
        return o.job is not None and o.job.attempt == job.attempt

    @precondition(lambda self: self.attempted())
    @rule(i=idx, a=idx)
    def renew(self, i: int, a: int) -> None:
        self.w.steps += 1
        o = self.pick(i, self.attempted())
        job = self.attempt(o, a)
        got = self.run(jobs.renew(self.w.pool, job, 600))
        if not self.holds(o, job):
            assert got == "lost"
        elif o.job and not o.job.ambiguous and o.cancel_requested and o.upstream is None:
            assert got == "canceled"
        else:
            assert got == "renewed"
            assert o.job is not None
            o.job.leased = True
            o.renewed.add(job.attempt)

    def sendable(self) -> list[int]:
        return [i for i, o in self.orders.items() if o.renewed]

    def renewed_attempt(self, o: Order, a: int) -> jobs.Job:
        live = [j for j in o.attempts if j.attempt in o.renewed]
        return live[a % len(live)]

    @precondition(lambda self: self.sendable())
    @rule(i=idx, a=idx)
    def sent(self, i: int, a: int) -> None:
        self.w.steps += 1
        o = self.pick(i, self.sendable())
        job = self.renewed_attempt(o, a)
        self.run(jobs.sent(self.w.pool, job, f"up-{o.id}-{job.attempt}"))
        if o.upstream is None:
            o.upstream = f"up-{o.id}-{job.attempt}"
        if self.holds(o, job):
            o.job = None

    @precondition(lambda self: self.attempted())
    @rule(i=idx, a=idx, maybe_sent=st.booleans())
    def retry(self, i: int, a: int, maybe_sent: bool) -> None:
        self.w.steps += 1
        o = self.pick(i, self.attempted())
        job = self.attempt(o, a)
        maybe_sent = maybe_sent and job.attempt in o.renewed
        got = self.run(jobs.retry(self.w.pool, job, 0, "model", maybe_sent))
        if not self.holds(o, job):
            assert got == "stale"
            return
        assert o.job is not None
        unsent = not maybe_sent and not o.job.ambiguous and o.upstream is None
        if unsent and o.cancel_requested and self.cancel_unsent(o):
            assert got == "canceled"
            return
        assert got == "retry"
        o.job.leased = False
        o.job.ambiguous = o.job.ambiguous or maybe_sent

    @precondition(lambda self: self.sendable())
    @rule(i=idx, a=idx)
    def fail(self, i: int, a: int) -> None:
        self.w.steps += 1
        o = self.pick(i, self.sendable())
        job = self.renewed_attempt(o, a)
        got = self.run(jobs.fail_dispatch(self.w.pool, job, "refused"))
        if not self.holds(o, job):
            assert got == "stale"
        elif o.upstream is not None:
            assert got == "sent"
            o.job = None
        else:
            assert got == "failed"
            self.cancel_unsent(o)
            o.job = None

    def upstream(self) -> list[int]:
        return sorted(i for i, o in self.orders.items() if o.upstream is not None)

    def apply(self, o: Order, status: str, start: int | None, remains: int | None) -> str:
        if status == "Partial" and remains is None:
            return "ignored"
        if rank(o.status) == 2 or rank(status) < rank(o.status):
            return "ignored"
        if status == o.status:
            if start != o.start_count or remains != o.remains:
                o.start_count = o.start_count if start is None else start
                o.remains = o.remains if remains is None else remains
                return "progress"
            return "ignored"
        refund = 0
        if status == "Partial":
            assert remains is not None
            refund = o.charge * min(max(remains, 0), o.total) // o.total
        elif status in ("Canceled", "Refunded", "Error"):
            refund = o.charge
        o.status = status
        o.start_count = o.start_count if start is None else start
        if status == "Completed":
            o.remains = 0
        elif status in ("Canceled", "Refunded", "Error"):
            o.remains = o.total
        elif remains is not None:
            o.remains = remains
        self.refund(o, refund)
        return "changed"

    @precondition(lambda self: self.upstream())
    @rule(
        picks=st.lists(
            st.tuples(idx, st.sampled_from(REPORTED), st.sampled_from([None, 0, 50]),
                      st.sampled_from([None, 0, 1, "some", "all", "over"])),
            min_size=1, max_size=3,
        )
    )  # fmt: skip
    def report(self, picks: list[tuple[int, str, int | None, object]]) -> None:
        self.w.steps += 1
        known = self.upstream()
        reports: dict[int, tuple[int, str, int | None, int | None]] = {}
        for i, status, start, left in picks:
            o = self.orders[known[i % len(known)]]
            remains = {"some": o.total // 3, "all": o.total, "over": o.total + 5}.get(left, left)  # type: ignore[call-overload]
            reports[o.id] = (o.id, status, start, remains)
        got = self.run(jobs.apply_order_statuses(self.w.pool, list(reports.values())))
        want = {i: self.apply(self.orders[i], *r[1:]) for i, r in sorted(reports.items())}
        assert got == want, (got, want)

    @precondition(lambda self: self.refills)
    @rule(i=idx, status=st.sampled_from(REFILL_REPORTED))
    def refill_report(self, i: int, status: str) -> None:
        self.w.steps += 1
        rid = sorted(self.refills)[i % len(self.refills)]
        got = self.run(jobs.apply_refill_statuses(self.w.pool, [(rid, status)]))
        old = self.refills[rid]
        if old == status or rank(old) == 2 or rank(status) < rank(old):
            assert got == {rid: "ignored"}
        else:
            assert got == {rid: "changed"}
            self.refills[rid] = status

    # -- the database agrees ---------------------------------------------------------------

    @invariant()
    def agrees(self) -> None:
        if not self.users:
            return
        ids = [u.id for u in self.users]
        balances, rows, refills = self.run(self.fetch(ids))
        assert dict(balances) == {u.id: u.balance for u in self.users}
        want = {
            o.id: (o.status, o.remains, o.start_count, o.charge, o.refunded, o.upstream,
                   o.cancel_requested, o.job and (o.job.attempt, o.job.leased, o.job.ambiguous))
            for o in self.orders.values()
        }  # fmt: skip
        got = {r[0]: (*r[1:8], None if r[8] is None else (r[8], r[9], r[10])) for r in rows}
        assert got == want
        assert dict(refills) == self.refills

    async def fetch(self, ids: list[int]):  # type: ignore[no-untyped-def]
        conn = self.w.conn
        return (
            await conn.fetch(BALANCES, ids),
            await conn.fetch(ORDER_ROWS, ids),
            await conn.fetch(REFILLS, ids),
        )

    def teardown(self) -> None:
        if self.users:
            self.run(self.settle())

    async def settle(self) -> None:
        conn = self.w.conn
        ids = [u.id for u in self.users]
        entries = await conn.fetch(ENTRIES, ids)
        for u in self.users:
            mine = [r for r in entries if r[0] == u.id]
            assert [(r[1], r[2], r[3]) for r in mine] == u.entries
            balance = 0
            for r in mine:
                assert (r[4], r[5]) == (balance, balance + r[2])
                balance = r[5]
            assert balance == u.balance
            own = [o for o in self.orders.values() if o.user == u.id]
            shown = await orders.orders_status(self.w.pool, u.id, [o.id for o in own])
            assert {i: r["charge"] for i, r in shown.items()} == {
                o.id: o.charge - o.refunded for o in own
            }
        # what a worker would do next belongs to no later program
        await conn.execute(
            "DELETE FROM outbox WHERE order_id = ANY($1::bigint[])", list(self.orders)
        )


async def _world(url: str) -> World:
    w = World()
    w.conn = await db.connect(url)
    w.pool = await db.create_pool(url, 2)
    w.panel_id, w.domain = await new_panel(w.conn)
    w.provider_id = await new_provider(w.conn)
    w.services = []
    for n, (rate, provider, cancel, refill) in enumerate([
        ("1.00", True, True, True), ("0.37", True, False, True), ("2.5", False, True, False),
        ("0", True, True, True), ("0.00333", True, True, True),
    ]):  # fmt: skip
        extra: dict[str, object] = {"cancel": cancel, "refill": refill}
        if provider:
            extra |= {"provider": str(w.provider_id), "provider_service": str(n)}
        sid = await new_service(w.conn, rate, **extra)
        w.services.append(Service(sid, money.parse(rate), provider, cancel, refill))
    return w


def test_wallet_model(own_database_url: str) -> None:
    loop = uvloop.new_event_loop()
    w = loop.run_until_complete(_world(own_database_url))
    w.loop = loop
    WalletModel.world = w
    started = time.monotonic()
    failed = True
    try:
        run_state_machine_as_test(
            WalletModel,
            settings=settings(
                max_examples=PROGRAMS, stateful_step_count=STEPS, derandomize=not LONG,
                deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck),
            ),
        )  # fmt: skip
        report = loop.run_until_complete(ledger.audit(w.conn))
        assert report.ok, report.violations
        failed = False
    finally:
        print(
            f"\nwallet model: {w.programs} programs, {w.steps} steps,"
            f" {time.monotonic() - started:.1f} s, failures: {int(failed)}"
        )
        loop.run_until_complete(w.pool.close())
        loop.run_until_complete(w.conn.close())
        loop.close()
