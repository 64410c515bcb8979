"""What the provider client reads of an answer, over loopback sockets: never a decompressed body,
and no more than the call's answer can need (a catalogue is large, a status answer is not)."""

from __future__ import annotations

import orjson
import pytest

from panelsrv.client.answers import OrderStatus, ProviderUnavailable
from panelsrv.worker.providers import Provider
from tests.worker.hookkit import gzip_bomb, peak_rss, peak_rss_measurable, reset_peak_rss
from tests.worker.test_providers import Canned, ok

MiB = 1 << 20
IDS = [str(n) for n in range(1, 101)]


@pytest.mark.skipif(not peak_rss_measurable(), reason="needs Linux /proc/self/clear_refs")
async def test_a_gzip_bomb_answer_is_unavailable_and_never_inflated():
    bomb = (200, "application/json", gzip_bomb(), "Content-Encoding: gzip\r\n")
    async with Canned(bomb, bomb) as up, Provider(up.url, "K") as p:
        before = reset_peak_rss()
        with pytest.raises(ProviderUnavailable) as status:
            await p.multi_status(IDS)
        with pytest.raises(ProviderUnavailable) as catalogue:
            await p.services()
        grew = peak_rss() - before
    # Before: aiohttp inflated it, up to the 16 MiB cap of every answer.
    assert grew < 4 * MiB, f"peak RSS grew {grew / MiB:.1f} MiB"
    assert status.value.reason == catalogue.value.reason == "compressed answer (gzip)"
    assert status.value.maybe_sent
    assert all(headers["accept-encoding"] == "identity" for headers, _ in up.requests)


async def test_each_call_reads_no_more_than_its_answer_can_need():
    padded = {"status": "Completed", "remains": "0", "note": "x" * 400}
    catalogue = [
        {"service": n, "name": f"Followers {n} " + "y" * 150, "type": "Default",
         "category": "Instagram", "rate": "0.90", "min": "10", "max": "10000"}
        for n in range(1, 5001)
    ]  # fmt: skip
    answers = (
        ok({**padded, "note": "x" * (64 << 10)}),  # one order's status: 64 KiB is not a status
        ok({n: padded for n in IDS}),  # 100 orders, ~45 KB: fine
        ok({n: {**padded, "note": "x" * 4000} for n in IDS}),  # 100 x 4 KB: past the bound
        ok(catalogue),  # ~1.2 MB
    )
    assert len(orjson.dumps(catalogue)) > MiB
    async with Canned(*answers) as up, Provider(up.url, "K") as p:
        with pytest.raises(ProviderUnavailable) as single:
            await p.status(1)
        assert single.value.reason == "answer too large"
        many = await p.multi_status(IDS)
        assert all(isinstance(s, OrderStatus) for s in many.values())
        with pytest.raises(ProviderUnavailable) as heavy:
            await p.multi_status(IDS)
        assert heavy.value.reason == "answer too large"
        assert len(await p.services()) == 5000
