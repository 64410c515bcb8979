"""What a page request sends: its form fields, its query and its cookies, read strictly.

Pure: standard library only. A form is `application/x-www-form-urlencoded` UTF-8 with each field
at most once and at most MAX_FIELDS of them; anything else is not a form (None), which the pages
answer as a bad request without looking further. Field values are bounded by the body cap.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

FORM = b"application/x-www-form-urlencoded"
MAX_FIELDS = 32
MAX_COOKIES = 64


def fields(data: bytes) -> dict[str, str] | None:
    """`a=1&b=2` -> {"a": "1", "b": "2"}; None when malformed or a field repeats."""
    try:
        text = data.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        return None
    found = dict(pairs)
    return found if len(found) == len(pairs) else None


def form(content_type: bytes, body: bytes) -> dict[str, str] | None:
    """A POST's form fields, or None when the body is not a urlencoded form."""
    if content_type.partition(b";")[0].strip() != FORM:
        return None
    return fields(body)


def cookie(header: bytes, name: str) -> str:
    """The value of cookie `name` in a Cookie header ("" when absent or repeated: a second
    cookie of the same name may have been planted by a sibling domain, so neither is used)."""
    found = ""
    wanted = name.encode()
    for count, part in enumerate(header.split(b";")):
        if count >= MAX_COOKIES:
            break
        key, eq, value = part.strip().partition(b"=")
        if eq and key == wanted:
            if found:
                return ""
            try:
                found = value.strip().decode("ascii")
            except UnicodeDecodeError:
                return ""
    return found
