"""Micro-benchmark of the request decoding hot path (not a test).

Run: .venv/bin/python bench/micro/bench_decode.py
Prints the best per-call time of each step for a typical `add` and `balance`, in µs.
"""

from __future__ import annotations

import datetime as dt
import json
import timeit
from collections.abc import Callable
from urllib.parse import parse_qsl

from panelsrv.api import sign
from panelsrv.api.actions import Add, fingerprint
from panelsrv.api.decode import decode_request
from panelsrv.api.validate import validate_add

KEY = "4f9c2a7d1e8b6c3a5f0e9d2c7b4a1f8e6d3c0b9a"
ADD_FORM = (f"key={KEY}&action=add&service=1234&link=https%3A%2F%2Finstagram.com%2Fyourtarget"
            "&quantity=1000").encode()
ADD_JSON = json.dumps({"key": KEY, "action": "add", "service": 1234,
                       "link": "https://instagram.com/yourtarget", "quantity": 1000}).encode()
ADD_PHP_JSON = ADD_JSON.replace(b"/", b"\\/")  # PHP's json_encode escapes slashes
BALANCE_FORM = f"key={KEY}&action=balance".encode()
MULTIPART = (
    b"--b\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n" + KEY.encode() + b"\r\n"
    b"--b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nadd\r\n"
    b"--b\r\nContent-Disposition: form-data; name=\"service\"\r\n\r\n1234\r\n"
    b"--b\r\nContent-Disposition: form-data; name=\"link\"\r\n\r\nhttps://instagram.com/x\r\n"
    b"--b\r\nContent-Disposition: form-data; name=\"quantity\"\r\n\r\n1000\r\n--b--\r\n"
)


def best(fn: Callable[[], object], number: int = 100_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    form_ct = b"application/x-www-form-urlencoded"
    added = decode_request(ADD_FORM, form_ct, b"")
    add = added.action
    assert isinstance(add, Add)
    today = dt.date(2026, 5, 16)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("decode add (form)", lambda: decode_request(ADD_FORM, form_ct, b"")),
        ("decode add (form, no content type)", lambda: decode_request(ADD_FORM, b"", b"")),
        ("decode balance (form)", lambda: decode_request(BALANCE_FORM, form_ct, b"")),
        ("decode add (json)", lambda: decode_request(ADD_JSON, b"application/json", b"")),
        ("decode add (json, PHP \\/)",
         lambda: decode_request(ADD_PHP_JSON, b"application/json", b"")),
        ("decode add (multipart)",
         lambda: decode_request(MULTIPART, b"multipart/form-data; boundary=b", b"")),
        ("  for scale: dict(parse_qsl(add))",
         lambda: dict(parse_qsl(ADD_FORM.decode(), keep_blank_values=True))),
        ("validate_add (default)",
         lambda: validate_add(add, "default", 100, 100_000, False, today)),
        ("fingerprint (add)", lambda: fingerprint(add)),
        ("sign.verify (add)", lambda: sign.verify(KEY, added.fields, "0" * 64)),
    ]
    for name, fn in cases:
        print(f"{name:40s} {best(fn):6.2f} µs")


if __name__ == "__main__":
    main()
