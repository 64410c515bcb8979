"""The Reader without a socket: framing, smuggling, limits and the pre-body checks, each request
fed whole, split at every byte boundary and one byte at a time, with the same events every way.

The corpus is test_framing's (which sends a few of the same bytes over real sockets).
"""

from __future__ import annotations

import pytest

from panelsrv.http.reader import SKIP_BODY_MAX
from panelsrv.http.request import Bounds
from tests.http.sansio import Event, events, every_split, reader, splits
from tests.http.test_framing import BAD, GOOD, NOT_IMPLEMENTED
from tests.kit.wire import post

H = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\n"
HEAD_T, BODY_T = Bounds().header_timeout, Bounds().body_timeout


def completes(seen: list[Event]) -> list[Event]:
    return [e for e in seen if e[0] == "complete"]


def refusal(seen: list[Event]) -> Event | None:
    refusals = [e for e in seen if e[0] == "refuse"]
    assert len(refusals) <= 1, seen  # a Reader refuses once, then reads nothing more
    return refusals[0] if refusals else None


@pytest.mark.parametrize("name", list(GOOD))
def test_a_good_request_means_the_same_however_it_is_cut(name: str) -> None:
    request, body = GOOD[name]
    seen = every_split(request)
    ((_, method, _, _, got, keep, reject),) = completes(seen)
    assert (method, got, keep, reject) == (b"POST", body, True, 0)
    assert refusal(seen) is None
    assert seen[:2] == [("deadline", HEAD_T), ("deadline", BODY_T)]  # each phase sets its own

    three = every_split(request * 3)
    assert completes(three) == completes(seen) * 3 and refusal(three) is None


@pytest.mark.parametrize(
    ("name", "status"),
    [(name, 400) for name in BAD] + [(name, 501) for name in NOT_IMPLEMENTED],
)
def test_a_bad_request_is_refused_however_it_is_cut_and_nothing_after_it_is_read(
    name: str, status: int
) -> None:
    request = BAD[name] if status == 400 else NOT_IMPLEMENTED[name]
    seen = every_split(request + post(b"smuggled=1"))
    reason = "bad_request" if status == 400 else "not_implemented"
    assert refusal(seen) == ("refuse", status, reason)
    assert seen[-1] == ("refuse", status, reason) and not completes(seen)


def test_a_good_request_before_a_bad_one_is_complete_then_the_bad_one_refused() -> None:
    seen = every_split(post(b"a=1") + BAD["cl_and_te"])
    assert [e[0] for e in seen if e[0] != "deadline"] == ["complete", "refuse"]


def test_a_declared_body_over_the_limit_is_413_before_it_is_read() -> None:
    lim = Bounds(max_body_bytes=1024)
    assert every_split(H + b"Content-Length: 1025\r\n\r\n", bounds=lim)[-1] == (
        "refuse",
        413,
        "body_too_large",
    )
    assert completes(every_split(post(b"x" * 1024), bounds=lim))  # exactly the limit is fine


def test_a_chunked_body_over_the_limit_is_413_on_the_running_length() -> None:
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
    head = H + b"Transfer-Encoding: chunked\r\n\r\n"
    lim = Bounds(max_body_bytes=1024)
    seen = events([head + chunk * 2, chunk], bounds=lim)
    assert refusal(seen) == ("refuse", 413, "body_too_large")
    assert refusal(events([head + chunk * 2 + b"0\r\n\r\n"], bounds=lim)) is None


@pytest.mark.parametrize(
    "data",
    [
        H + b"X-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n",
        H + (b"Cookie: a=" + b"1" * 1100 + b"\r\n") * 2 + b"Content-Length: 0\r\n\r\n",
        b"POST /api/v2?" + b"q" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        H + b"".join(b"X-%d: 1\r\n" % i for i in range(25)) + b"\r\n",
    ],
)
def test_headers_over_the_limit_are_431(data: bytes) -> None:
    lim = Bounds(max_header_bytes=2048, max_headers=20)
    assert refusal(events(data, bounds=lim)) == ("refuse", 431, "headers_too_large")


def test_an_endless_header_trickled_in_is_cut_at_the_limit() -> None:
    lim = Bounds(max_header_bytes=2048)
    reads = [H + b"X-Endless: "] + [b"a" * 500] * 10  # each inside the same unfinished header
    seen = events(reads, bounds=lim)
    assert refusal(seen) == ("refuse", 431, "headers_too_large")
    assert events(reads[:4], bounds=lim) == [("deadline", HEAD_T)]  # under the limit: waiting


def test_a_precheck_refusal_of_a_large_body_closes_without_reading_it() -> None:
    seen: list[str] = []

    def precheck(ip: str) -> int:
        seen.append(ip)
        return 7

    got = events(H + b"Content-Length: 100000\r\n\r\nkey=only-the-start", precheck=precheck)
    assert refusal(got) == ("refuse", 429, "precheck") and seen == ["127.0.0.1"]


def test_a_precheck_refusal_of_a_small_request_drops_its_body_and_reads_on() -> None:
    waits = [2, 0]
    seen = events(post(b"k" * 1000) + post(b"action=balance"), precheck=lambda ip: waits.pop(0))
    assert [e for e in seen if e[0] != "deadline"] == [
        ("rejected", "precheck"),
        ("complete", b"", "panel.test", b"", b"", True, 429),  # its body read and dropped
        ("complete", b"POST", "panel.test", b"", b"action=balance", True, 0),
    ]


@pytest.mark.parametrize(
    ("wait", "framing"),
    [
        (-300, b"Content-Length: 3\r\n\r\nk=1"),  # a blocked address: always closed
        (1, b"Transfer-Encoding: chunked\r\n\r\n3\r\nk=1\r\n0\r\n\r\n"),
        (1, b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n"),  # no 100 for a refusal
        (1, b"Content-Length: %d\r\n\r\n" % (SKIP_BODY_MAX + 1)),
    ],
)
def test_precheck_refusals_that_close(wait: int, framing: bytes) -> None:
    seen = every_split(H + framing, precheck=lambda ip: wait)
    assert seen[-1] == ("refuse", 429, "precheck") and ("continue",) not in seen


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /nope HTTP/1.1",
        b"POST /nope HTTP/1.1",
        b"PUT /api/v2 HTTP/1.1",
        b"GET /api/v2 HTTP/1.1",
    ],
)
def test_404_and_405_pass_the_precheck_like_any_request(request_line: bytes) -> None:
    seen: list[str] = []
    got = events(request_line + b"\r\nHost: a\r\n\r\n", precheck=lambda ip: seen.append(ip) or 3)  # type: ignore[func-returns-value]
    assert ("rejected", "precheck") in got and seen == ["127.0.0.1"]
    assert completes(got)[0][-1] == 429


def test_the_precheck_runs_before_the_size() -> None:
    got = events(
        H + b"Content-Length: 5000\r\n\r\n",
        precheck=lambda ip: 1,
        bounds=Bounds(max_body_bytes=1024),
    )
    assert refusal(got) == ("refuse", 429, "precheck")


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", 404, "not_found"),
        (b"PUT /api/v2 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method"),
        (post(b"x" * SKIP_BODY_MAX, target=b"/nope"), 404, "not_found"),  # skipped, kept
    ],
)
def test_an_early_answer_with_a_small_body_keeps_the_connection(
    data: bytes, status: int, reason: str
) -> None:
    seen = every_split(data + post(b"a=1"))
    assert [e[0] for e in seen if e[0] != "deadline"] == ["rejected", "complete", "complete"]
    assert ("rejected", reason) in seen and completes(seen)[0][-1] == status


def test_an_early_answer_with_a_large_or_unknown_body_closes() -> None:
    large = post(b"x" * (SKIP_BODY_MAX + 1), target=b"/nope")
    assert refusal(events(large)) == ("refuse", 404, "not_found")
    chunked = b"POST /nope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert refusal(events(chunked)) == ("refuse", 404, "not_found")


def test_expect_100_continue_is_an_event_only_for_a_request_that_may_send_its_body() -> None:
    expect = b"Expect: 100-continue\r\n"
    assert ("continue",) in every_split(post(b"abc", expect))
    assert ("continue",) not in events(post(b"", expect))  # no body to invite
    http10 = b"POST /api/v2 HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    assert ("continue",) not in events(http10)  # RFC 9110 10.1.1: not to an HTTP/1.0 client


def test_keep_alive_is_the_requests_own() -> None:
    def keep(request: bytes) -> bool:
        (complete,) = completes(events(request))
        return bool(complete[5])

    assert keep(post())
    assert not keep(post(b"", b"Connection: close\r\n"))
    assert not keep(b"POST /api/v2 HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert keep(b"POST /api/v2 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")


def cookies(data: bytes) -> list[bytes]:
    """The Cookie each request in `data` reached its handler with, the same however the reads
    are cut."""
    said: list[bytes] | None = None
    for pieces in [[data], *splits(data)]:
        r, sink = reader()
        for piece in pieces:
            r.feed(piece)
        assert said is None or sink.cookies == said, pieces
        said = sink.cookies
    assert said is not None
    return said


def test_the_cookie_header_reaches_the_request_and_several_are_joined() -> None:
    one = post(b"", b"Cookie: panelsrv=abc; theme=dark\r\n")
    assert cookies(one) == [b"panelsrv=abc; theme=dark"]
    # RFC 9113 8.2.3 / RFC 6265 5.4: several Cookie fields mean one list joined by "; "
    two = post(b"", b"Cookie: a=1 \r\nX-Other: x\r\ncookie: b=2\r\n")
    assert cookies(two) == [b"a=1; b=2"]


def test_a_request_without_a_cookie_has_none_even_after_one_that_had() -> None:
    assert cookies(post(b"", b"Cookie: a=1\r\n") + post() + post(b"", b"Cookie: c=3\r\n")) == [
        b"a=1",
        b"",
        b"c=3",
    ]


def test_a_closed_reader_says_nothing_more() -> None:
    r, sink = reader()
    r.feed(post()[:10])
    r.close()
    r.feed(post()[10:] + post())
    assert sink.seen == [("deadline", HEAD_T)]


@pytest.mark.parametrize("before", [b"", b"POST /api/v2 HTTP/1.1\r\n", post(b"key=k")])
def test_an_empty_read_changes_nothing(before: bytes) -> None:
    # Found by the fuzzer: an empty read between messages indexed its last byte.
    rest = post(b"action=balance")
    assert events([before, b"", rest]) == events([before, rest])


def test_a_head_near_the_limit_is_refused_or_not_whatever_the_reads() -> None:
    # Found by the fuzzer: the bound was the parsed size when a head came in one read, its raw
    # bytes while it trickled in (blanks and the request line included). Now always the raw.
    head = b"POST /api/v2 HTTP/1.1\r\nHost:" + b" " * 30 + b"p\r\nContent-Length: 0\r\n\r\n"
    bounds = Bounds(max_header_bytes=64)
    said = [e for e in events(head, bounds=bounds) if e[0] != "deadline"]
    trickled = [head[i : i + 1] for i in range(len(head))]
    assert [e for e in events(trickled, bounds=bounds) if e[0] != "deadline"] == said


@pytest.mark.parametrize("lead", [b"", b"\r\n"])
@pytest.mark.parametrize("over", [0, 1])
def test_the_head_bound_counts_its_raw_bytes_in_every_split(lead: bytes, over: int) -> None:
    bounds = Bounds(max_header_bytes=96)
    start = b"POST /api/v2 HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\nX-Pad:"
    head = start + b" " * (96 + over - len(start) - 5) + b"a\r\n\r\n"
    assert len(head) == 96 + over  # the request line to the empty line, blanks included
    message = lead + head
    said = [e for e in events(message, bounds=bounds) if e[0] != "deadline"]
    assert any(e[0] == "refuse" for e in said) == bool(over), said
    for cut in range(1, len(message)):
        split = events([message[:cut], message[cut:]], bounds=bounds)
        assert [e for e in split if e[0] != "deadline"] == said, cut
