"""Strikes -> blocks, expiry, the allow-list, and bounded memory."""

from __future__ import annotations

import pytest

from panelsrv.guard.blocklist import AllowList, Blocklist


def test_ten_strikes_within_the_window_block_for_the_block_time() -> None:
    bl = Blocklist(limit=10, window=60, block_seconds=300)
    for i in range(9):
        assert not bl.strike("1.2.3.4", 100.0 + i)
    assert bl.blocked_until("1.2.3.4", 109.0) == 0.0
    assert bl.strike("1.2.3.4", 109.0)
    assert bl.blocked_until("1.2.3.4", 109.0) == pytest.approx(409.0)
    assert bl.blocked_until("1.2.3.4", 408.9) == pytest.approx(409.0)
    assert bl.blocked_until("1.2.3.4", 409.0) == 0.0
    assert bl.blocked_until("5.6.7.8", 109.0) == 0.0


def test_strikes_outside_the_window_do_not_add_up() -> None:
    bl = Blocklist(limit=3, window=10, block_seconds=5)
    bl.strike("a", 0.0)
    bl.strike("a", 5.0)
    assert not bl.strike("a", 10.0)  # the first window ended: this opens a new one
    assert not bl.strike("a", 11.0)
    assert bl.strike("a", 12.0)


def test_a_block_restarts_the_count() -> None:
    bl = Blocklist(limit=2, window=100, block_seconds=1)
    bl.strike("a", 0.0)
    assert bl.strike("a", 0.0)
    assert not bl.strike("a", 2.0)
    assert bl.blocked_until("a", 2.0) == 0.0


def test_allow_list_addresses_and_networks_are_never_blocked() -> None:
    bl = Blocklist(limit=1, allow=["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    for ip in ("10.1.2.3", "192.0.2.7", "2001:db8::1", "::ffff:10.9.9.9"):
        assert not bl.strike(ip, 0.0)
        assert not bl.block(ip, 100.0, 0.0)
        assert bl.blocked_until(ip, 1.0) == 0.0
    assert bl.strike("192.0.2.8", 0.0)
    assert bl.blocked_until("192.0.2.8", 1.0) > 0.0


def test_allow_list_rejects_garbage_addresses() -> None:
    allow = AllowList(["127.0.0.1", "::1"])
    assert "127.0.0.1" in allow and "::1" in allow
    assert "not-an-ip" not in allow
    assert "127.0.0.1" not in AllowList()


def test_later_block_wins_and_past_blocks_are_ignored() -> None:
    bl = Blocklist()
    assert bl.block("a", 50.0, 0.0)
    bl.block("a", 20.0, 0.0)
    assert bl.blocked_until("a", 0.0) == 50.0
    assert not bl.block("b", 5.0, 10.0)
    assert bl.blocked_until("b", 10.0) == 0.0


def test_strike_flood_from_100k_addresses_stays_bounded() -> None:
    cap = 4096
    bl = Blocklist(limit=10, window=60, max_keys=cap)
    for _ in range(9):
        bl.strike("attacker", 0.0)
    for i in range(100_000):
        bl.strike(f"ip{i}", i * 1e-5)
        assert len(bl._strikes) <= cap
    # The address closest to a block survived the eviction rounds.
    assert bl.strike("attacker", 1.0)


def test_block_flood_keeps_the_longest_blocks() -> None:
    cap = 1024
    bl = Blocklist(max_keys=cap)
    bl.block("long", 10_000.0, 0.0)
    for i in range(20_000):
        bl.block(f"ip{i}", 100.0 + i * 1e-3, 0.0)
        assert len(bl._blocks) <= cap
    assert bl.blocked_until("long", 50.0) == 10_000.0
    bl.sweep(1000.0)
    assert bl.blocked_count(1000.0) == 1
