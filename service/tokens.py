"""Watch tokens: an HMAC-SHA256 of the job id, so only whoever submitted a job can watch it.

The first key signs; every key verifies, so keys can be rotated without breaking open watches.
Comparison is constant-time. Tokens never go into logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

_DOMAIN = b"resultcast/watch/v1:"


def sign(job: str, key: str) -> str:
    digest = hmac.new(key.encode(), _DOMAIN + job.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(job: str, token: object, keys: Sequence[str]) -> bool:
    """True when `token` was signed for `job` by any of `keys`."""
    if not isinstance(token, str) or not token or len(token) > 128:
        return False
    given = token.encode()
    ok = False
    for key in keys:
        # Check every key (no early exit) so timing does not tell which one matched.
        ok |= hmac.compare_digest(sign(job, key).encode(), given)
    return ok
