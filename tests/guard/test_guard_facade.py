"""The Guard facade on one process: Retry-After answers, blocks before buckets, user caps,
lifecycle."""

from __future__ import annotations

import asyncio

from panelsrv.guard import Guard, GuardSettings, retry_after


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(**settings: object) -> tuple[Guard, Clock]:
    clock = Clock()
    return Guard(GuardSettings(**settings), clock=clock), clock  # type: ignore[arg-type]


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert retry_after(0.001) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.01) == 2
    assert retry_after(299.5) == 300


def test_check_ip_admits_the_burst_then_answers_a_keep_alive_retry_after() -> None:
    guard, clock = make(ip_rate=10, ip_burst=5)
    assert [guard.check_ip("1.1.1.1") for _ in range(5)] == [0] * 5
    assert guard.check_ip("1.1.1.1") == 1  # > 0: over the bucket, the connection may stay
    assert guard.check_ip("2.2.2.2") == 0
    clock.now += 0.1
    assert guard.check_ip("1.1.1.1") == 0


def test_strikes_block_before_the_bucket_and_the_block_expires() -> None:
    guard, clock = make(strike_limit=10, strike_window=60, block_seconds=300)
    for _ in range(10):
        assert guard.check_block("6.6.6.6") == 0
        guard.strike("6.6.6.6")
    assert guard.check_ip("6.6.6.6") == -300  # < 0: blocked, the connection closes
    assert guard.check_block("6.6.6.6") == 300
    clock.now += 299.5
    assert guard.check_ip("6.6.6.6") == -1
    clock.now += 0.5
    assert guard.check_block("6.6.6.6") == 0
    assert guard.check_ip("6.6.6.6") == 0


def test_allow_listed_addresses_are_never_blocked() -> None:
    guard, _ = make(strike_limit=2, never_block=("127.0.0.0/8",))
    for _ in range(20):
        guard.strike("127.0.0.1")
    assert guard.check_ip("127.0.0.1") == 0


def test_check_user_is_a_soft_cap_in_seconds() -> None:
    guard, clock = make(user_rate=2, user_burst=2)
    assert guard.check_user(7) == 0.0
    assert guard.check_user(7) == 0.0
    assert guard.check_user(7) == 0.5
    assert guard.check_user(8) == 0.0
    clock.now += 0.5
    assert guard.check_user(7) == 0.0


def test_metrics_report_local_mode() -> None:
    guard, _ = make()
    guard.check_ip("1.1.1.1")
    metrics = guard.metrics()
    assert metrics["guard_shared_up"] == 0.0
    assert metrics["guard_ip_keys"] == 1.0
    assert guard.shared is False


async def test_start_without_backend_sweeps_and_closes() -> None:
    guard = Guard(GuardSettings(ip_rate=1000, ip_burst=1))
    guard.start()
    guard.check_ip("1.1.1.1")
    await asyncio.sleep(0)
    await guard.close()
    assert guard.metrics()["guard_shared_up"] == 0.0


async def test_without_a_backend_strikes_are_not_queued_for_sharing() -> None:
    guard = Guard(GuardSettings())
    guard.start()
    try:
        for i in range(2500):  # ten strikes for each of 250 addresses
            guard.strike(f"192.0.2.{i % 250}")
        assert guard.coord.collect().strike_ips == []  # nothing will ever collect them
        assert guard.check_ip("192.0.2.1") < 0  # the local blocks still work
    finally:
        await guard.close()


def test_ipv6_clients_are_limited_and_blocked_by_their_64() -> None:
    from panelsrv.guard.limits import client_key

    assert client_key("203.0.113.7") == "203.0.113.7"
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:198.51.100.4") == "198.51.100.4"
    now = [0.0]
    guard = Guard(
        GuardSettings(ip_rate=1, ip_burst=2, strike_limit=2, never_block=("2001:db8:9::1",)),
        clock=lambda: now[0],
    )
    assert guard.check_ip("2001:db8:1:2::1") == 0
    assert guard.check_ip("2001:db8:1:2::2") == 0
    assert guard.check_ip("2001:db8:1:2::3") > 0  # the same /64's bucket is empty
    assert guard.check_ip("2001:db8:1:3::1") == 0
    guard.strike("2001:db8:5::1")
    guard.strike("2001:db8:5::2")
    assert guard.check_block("2001:db8:5::77") > 0  # blocked as a /64
    for _ in range(5):
        guard.strike("2001:db8:9::1")  # allow-listed by its exact address
    assert guard.check_block("2001:db8:9::1") == 0
    guard.strike("2001:db8:9::2")
    guard.strike("2001:db8:9::2")  # its neighbour blocks the /64 ...
    assert guard.check_block("2001:db8:9::3") > 0
    assert guard.check_block("2001:db8:9::1") == 0  # ... but never the allowed address
