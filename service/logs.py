"""Logging set-up, with a last line of defence against secrets in log lines."""

from __future__ import annotations

import logging
import re

_URL_PASSWORD = re.compile(r"(rediss?://[^:/@\s]*:)[^@\s]+@")
# `token=` however its name is spelled in a query string: `%74oken=` means the same to the
# server, so it must be masked the same way.
_TOKEN_NAME = "".join(f"(?:{c}|%{ord(c):02x})" for c in "token")
_TOKEN_PARAM = re.compile(rf"({_TOKEN_NAME}=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with passwords in Redis URLs and `token=` query values masked."""
    return _TOKEN_PARAM.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


class RedactSecrets(logging.Filter):
    """Masks passwords in Redis URLs and `token=` query values in every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
