"""`Authorization: Bearer <key>` checked against the keys a route accepts, in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.requests import Request


def bearer_matches(request: Request, keys: Iterable[str]) -> bool:
    """Whether the request carries one of `keys` (every key is compared, so the time taken
    does not say which one, or how much of it, matched)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(key.encode(), given.strip().encode())
    return ok
