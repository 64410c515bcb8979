"""Sign a panelsrv API request in the unambiguous form (`sign_version=2`) and send it.

    PANEL_URL=https://your-panel.example/api/v2 PANEL_KEY=your-api-key python3 sign_v2.py

Python 3.8+, standard library only. The signed string: every field but `sign`, name and value
percent-encoded (RFC 3986: every UTF-8 byte but A-Z a-z 0-9 - . _ ~ as %XX, upper-case hex),
the pairs sorted by encoded name, `name=value` joined by `&`;
sign = hex(HMAC-SHA256(api key, signed string)). Values: strings or integers only.
"""

import hashlib
import hmac
import os
import sys
import time
from urllib.error import HTTPError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen


def canonical_v2(fields):
    # quote(safe="") leaves exactly RFC 3986's unreserved characters unencoded.
    pairs = sorted(
        (quote(str(name), safe=""), quote(str(value), safe=""))
        for name, value in fields.items()
        if name != "sign"
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def signed_v2(api_key, fields):
    fields = {**fields, "sign_version": 2, "timestamp": int(time.time())}
    message = canonical_v2(fields).encode()
    fields["sign"] = hmac.new(api_key.encode(), message, hashlib.sha256).hexdigest()
    return fields


def main():
    api_key = os.environ["PANEL_KEY"]
    url = os.environ.get("PANEL_URL", "https://your-panel.example/api/v2")
    order = {
        "key": api_key,
        "action": "add",
        "service": os.environ.get("PANEL_SERVICE", "1234"),
        # A link with `&` in its query: the seeds' form cannot sign it unambiguously.
        "link": os.environ.get("PANEL_LINK", "https://www.youtube.com/watch?v=abc&t=42&action=x"),
        "quantity": os.environ.get("PANEL_QUANTITY", "1000"),
    }
    body = urlencode(signed_v2(api_key, order)).encode()
    request = Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urlopen(request, timeout=30) as response:
            print(response.read().decode())
    except HTTPError as error:
        print(error.read().decode())
        sys.exit(1)


if __name__ == "__main__":
    main()
