"""The fields an `add` passes to its provider beyond this API's own: targeting (`country`,
`device`, `type_of_traffic`, `google_keyword`, `referring_url`, `keywords`, `groups`, ...),
which providers take and this API does not define.

Pure; imports `api.actions` (the field names) and `errors`. `add_extras` is the rule, applied
by the decoder to every `add`; the result is `Add.extras`, stored in the order's `extras` next
to the type's own fields and sent upstream unchanged (`worker.dispatch.order_fields`). They
count in the idempotency fingerprint (`actions.fingerprint`) and, as fields as received, in a
signature (`api.sign`: in form 2 only).

Invariants: nothing outside the rule is kept or dropped silently, it is a 400 naming the field
and the rule; no name of this API is ever passed through (`RESERVED_NAMES`), so an extra can
never stand for a field panelsrv itself sends upstream (`key`, `action`, the order's own).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from panelsrv.api.actions import (
    ABSENT_TEXTS,
    EVERY_FIELD_NAME,
    FIELD_NAMES,
    MAX_NAME_ECHO,
    NOT_WIRE,
)
from panelsrv.errors import bad_request

MAX_EXTRAS: Final = 20
MAX_EXTRA_VALUE: Final = 1000
_NAME: Final = re.compile(r"[a-z0-9_]{1,64}")
# C0 controls but tab, LF and CR; DEL; C1: what no multi-line text field takes (api.validate).
CONTROL_IN_TEXT: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Every field name of this API, whatever the action, and `extras`. What panelsrv sends upstream
# (key, action, the order's own fields) is among them.
RESERVED_NAMES: Final = EVERY_FIELD_NAME | NOT_WIRE
_ADD_NAMES: Final = FIELD_NAMES["add"]


def is_extra_name(name: str) -> bool:
    """True for a name an `add` may pass to the provider: 1-64 of `a-z 0-9 _`, not reserved."""
    return _NAME.fullmatch(name) is not None and name not in RESERVED_NAMES


def add_extras(fields: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The fields of an `add` (as decoded) beyond its own, sorted by name.

    At most `MAX_EXTRAS`; a name of 1-64 `a-z 0-9 _` that is no field of this API; a value a
    string (a JSON integer counts as its digits) of at most `MAX_EXTRA_VALUE` characters with
    no control character but tab and line breaks (lists such as `keywords` are line-separated).
    A value of `ABSENT_TEXTS` (`""`, `undefined`, `null`), or JSON null, is absent, as for the
    API's own optional fields. Values are kept as received, blanks included.
    """
    if _ADD_NAMES.issuperset(fields):  # nearly every add: nothing to look at
        return ()
    extras = []
    for name, value in fields.items():
        if name in _ADD_NAMES:
            continue
        if not is_extra_name(name):
            echo = name[:MAX_NAME_ECHO]
            if name in RESERVED_NAMES:
                raise bad_request(
                    echo, "a field of this API but not of add, never passed to the provider"
                )
            raise bad_request(
                echo,
                "not a field of add; a field passed to the provider is named with 1 to 64"
                " characters a-z, 0-9 or _",
            )
        if value is None or (type(value) is str and value in ABSENT_TEXTS):
            continue
        if type(value) is int:
            value = str(value)
        elif type(value) is not str:
            raise bad_request(name, "must be a string or an integer")
        if len(value) > MAX_EXTRA_VALUE:
            raise bad_request(name, f"must be a string of at most {MAX_EXTRA_VALUE} characters")
        if CONTROL_IN_TEXT.search(value):
            raise bad_request(name, "must not contain control characters")
        extras.append((name, value))
    if len(extras) > MAX_EXTRAS:
        extras.sort()
        raise bad_request(
            extras[MAX_EXTRAS][0],
            f"at most {MAX_EXTRAS} fields beyond those of add are passed to the provider",
        )
    extras.sort()
    return tuple(extras)
