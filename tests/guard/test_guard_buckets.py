"""GCRA buckets: burst and rate, Retry-After values, eviction, bounded memory under a flood."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from panelsrv.guard.buckets import Buckets


def test_burst_passes_at_once_then_one_token_per_interval() -> None:
    b = Buckets(rate=100, burst=100)
    assert all(b.take("a", 10.0) == 0.0 for _ in range(100))
    assert b.take("a", 10.0) == pytest.approx(0.01)
    assert b.take("a", 10.005) == pytest.approx(0.005)
    assert b.take("a", 10.01) == 0.0
    assert b.take("a", 10.01) > 0.0


def test_refused_takes_cost_nothing() -> None:
    b = Buckets(rate=1, burst=1)
    assert b.take("a", 0.0) == 0.0
    for _ in range(50):
        assert b.take("a", 0.5) == pytest.approx(0.5)
    assert b.take("a", 1.0) == 0.0


def test_keys_are_independent_and_any_hashable() -> None:
    b = Buckets(rate=1, burst=2)
    assert b.take(7, 0.0) == b.take(7, 0.0) == 0.0
    assert b.take(7, 0.0) > 0.0
    assert b.take(8, 0.0) == 0.0


def test_sweep_drops_full_buckets_only() -> None:
    b = Buckets(rate=10, burst=10)
    b.take("idle", 0.0)
    for _ in range(10):
        b.take("busy", 0.9)
    assert b.sweep(1.0) == 1
    assert len(b) == 1
    assert b.debt("busy", 1.0) == 9  # the busy key kept its debt


def test_debt_and_drain() -> None:
    b = Buckets(rate=10, burst=10)
    assert b.debt("a", 0.0) == 0
    for _ in range(4):
        b.take("a", 0.0)
    assert b.debt("a", 0.0) == 4
    assert b.debt("a", 0.2) == 2
    b.drain("x", 0.0)
    assert b.take("x", 0.0) == pytest.approx(0.1)
    assert b.take("x", 0.1) == 0.0


def test_reconfigure_keeps_used_tokens() -> None:
    b = Buckets(rate=100, burst=100)
    for _ in range(30):
        b.take("a", 0.0)
    b.reconfigure(50, 50, 0.0)  # 30 of 50 used: 20 left
    assert sum(b.take("a", 0.0) == 0.0 for _ in range(40)) == 20
    assert (b.rate, b.burst) == (50, 50)


def test_100k_distinct_addresses_stay_bounded_and_abusers_stay_limited() -> None:
    cap = 8192
    b = Buckets(rate=100, burst=100, max_keys=cap)
    for _ in range(100):
        b.take("abuser", 0.0)
    assert b.take("abuser", 0.0) > 0.0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        for i in range(100_000):
            now = i * 1e-6  # all within 0.1 s: none of them is full again
            b.take(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", now)
            b.take("abuser", now)
            if i % 1000 == 0:
                peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
            assert len(b) <= cap
    finally:
        tracemalloc.stop()
    assert peak < cap * 400  # dict slot + key + float, with slack
    assert b.debt("abuser", 0.1) >= 89  # the deepest debt is never forgiven


def test_idle_flood_is_swept_back_to_nothing() -> None:
    b = Buckets(rate=100, burst=100, max_keys=1 << 20)
    for i in range(100_000):
        b.take(i, 0.0)
    assert len(b) == 100_000
    b.sweep(1.0)
    assert len(b) == 0


def test_make_room_pause_is_short_at_the_default_cap() -> None:
    b = Buckets(rate=100, burst=100)  # default cap 65,536
    for i in range(65_536):
        b.take(i, i * 1e-7)
    started = time.perf_counter()
    b.take("one more", 0.01)
    pause = time.perf_counter() - started
    assert len(b) <= 65_536 // 2 + 1
    assert pause < 0.25, f"eviction pause {pause * 1000:.1f} ms"
