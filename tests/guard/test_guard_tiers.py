"""Rate-limit tiers in the guard: each tier's users held to its own rate and burst (fake clock),
a tier whose limits change starting afresh, idle tiers forgotten, and a tier's limit shared by
several processes like the default one (the deterministic simulator)."""

from __future__ import annotations

from panelsrv.guard.coord import Limiter, excess_bound
from panelsrv.panelconf import Tier
from tests.guard.guardsim import Cluster
from tests.guard.test_guard_facade import make

BASIC = Tier(1, "basic", 1.0, 3, 30)
PRO = Tier(2, "pro", 100.0, 100, 30)


def test_each_tier_holds_its_users_to_its_own_rate_and_burst() -> None:
    guard, clock = make(user_rate=2, user_burst=2)
    assert [guard.check_user(7, BASIC) for _ in range(3)] == [0.0] * 3
    assert guard.check_user(7, BASIC) == 1.0  # the 4th within the burst: a token a second
    assert [guard.check_user(8, PRO) for _ in range(100)] == [0.0] * 100
    assert guard.check_user(8, PRO) > 0
    # The default cap is the server's, apart from every tier's.
    assert [guard.check_user(9) for _ in range(2)] == [0.0, 0.0]
    assert guard.check_user(9) == 0.5
    clock.now += 1.0
    assert guard.check_user(7, BASIC) == 0.0
    assert guard.check_user(7, BASIC) > 0


def test_users_of_one_tier_have_a_bucket_each() -> None:
    guard, _ = make()
    for user in range(10):
        assert [guard.check_user(user, BASIC) for _ in range(3)] == [0.0] * 3
        assert guard.check_user(user, BASIC) > 0
    assert guard.metrics()["guard_user_keys"] == 10.0


def test_a_tier_whose_limits_change_starts_afresh_and_the_old_one_is_forgotten() -> None:
    guard, clock = make()
    for _ in range(3):
        guard.check_user(7, BASIC)
    assert guard.check_user(7, BASIC) > 0
    raised = Tier(1, "basic", 1.0, 5, 30)  # `tier set --burst 5`: a new key
    assert raised.key != BASIC.key
    assert [guard.check_user(7, raised) for _ in range(5)] == [0.0] * 5
    assert guard.check_user(7, raised) > 0
    assert set(guard.coord.limiters) == {"ip", "user", BASIC.key, raised.key}
    clock.now += 10.0  # every bucket full again: nothing left worth keeping
    guard.coord.sweep(clock.now)
    assert set(guard.coord.limiters) == {"ip", "user"}
    assert [guard.check_user(7, raised) for _ in range(5)] == [0.0] * 5


def test_the_refusals_name_the_tier_and_are_built_once() -> None:
    assert BASIC.rate_body == (
        b'{"error":"Too many requests: your tier \'basic\' allows 1 requests/s (burst 3)"}'
    )
    assert Tier(3, "slow", 0.5, 2, 10).orders_body == (
        b'{"error":"Too many requests: your tier \'slow\' allows 10 orders per minute"}'
    )


def tier_limiter(tier: Tier, interval: float = 0.1) -> Limiter:
    return Limiter(tier.key, tier.rate, tier.burst, interval, int)


def test_a_tier_is_shared_by_every_process_within_the_bound() -> None:
    tier = Tier(5, "mid", 20.0, 10, 30)
    cluster = Cluster(2)
    for node in cluster.nodes:
        node.adopt(tier_limiter(tier), cluster.now)
    admitted = 0
    for i in range(2000):
        t = 1.0 + i / 1000
        cluster.advance(t)
        admitted += cluster.nodes[i % 2].limiters[tier.key].take(42, t) == 0.0
    # Two seconds of a flood at rate 20, burst 10: the tier's rate at least, never beyond the
    # tolerance of any shared limit.
    assert 20 * 2 <= admitted <= 20 * 2 + 10 + excess_bound(2, 20, 10, 0.1)


def test_a_tier_met_while_a_sync_is_in_flight_joins_the_next_one() -> None:
    cluster = Cluster(2)
    cluster.advance(0.5)  # every process has heard of the other
    node = cluster.nodes[0]
    request = node.collect()
    late = tier_limiter(BASIC)
    node.adopt(late, cluster.now)  # between collect and apply: not in this request
    assert late.procs == 2 and late.buckets.burst == 1  # but shared at once: its share of b
    node.apply(cluster.store.sync(request, cluster.now), cluster.now)
    assert [b.name for b in node.collect().limits] == ["ip", "user", BASIC.key]


def test_a_backend_failure_leaves_new_tiers_deciding_alone() -> None:
    cluster = Cluster(2)
    cluster.advance(0.5)
    node = cluster.nodes[0]
    node.fail(cluster.now)
    alone = tier_limiter(BASIC)
    node.adopt(alone, cluster.now)
    assert alone.procs == 1 and alone.buckets.burst == 3
