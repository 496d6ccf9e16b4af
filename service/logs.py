"""Logging set-up, with a last line of defence against secrets in log lines."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

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


# Requests that monitoring and the demo page repeat every few seconds: logged at DEBUG.
POLLED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
_ROUTINE = frozenset({"connection open", "connection closed"})
_BANNER = "Uvicorn running on "


class RoutineAtDebug(logging.Filter):
    """uvicorn's routine lines at DEBUG, under names that say what they are.

    uvicorn logs everything that is not an access line on a logger named `uvicorn.error`,
    opening and closing each WebSocket included; that is shown as `uvicorn`. A WebSocket's
    "connection open/closed" and successful polls of `/metrics`, `/healthz` and `/readyz` are
    DEBUG: at INFO an open demo tab or a scraper would add a line every few seconds. Without
    `banner`, uvicorn's own "running on <URL>" is DEBUG too (`dev` announces its one URL).
    """

    def __init__(self, *, banner: bool = True) -> None:
        super().__init__()
        self._banner = banner

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            if record.name == "uvicorn.error":
                record.name = "uvicorn"
            return True
        if record.name == "uvicorn.error":
            record.name = "uvicorn"
            message = str(record.msg)
            if message in _ROUTINE or (not self._banner and message.startswith(_BANNER)):
                return _at_debug(record)
        elif record.name == "uvicorn.access" and _is_poll(record.args):
            return _at_debug(record)
        return True


def _is_poll(args: object) -> bool:
    """uvicorn's access line arguments: (client, method, path, HTTP version, status)."""
    if not isinstance(args, tuple) or len(args) < 5:
        return False
    path, status = str(args[2]).split("?", 1)[0], args[4]
    return path in POLLED_PATHS and isinstance(status, int) and status < 400


def _at_debug(record: logging.LogRecord) -> bool:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        return False
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return True


# What every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class TextLines(logging.Formatter):
    """`time LEVEL logger: message`, redacted as a whole: a traceback's text is masked too
    (an exception's message may quote a URL with its token)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the fields the
    line is about (`extra=`: job, socket, code, cause...) and, after a failure, the traceback.
    Every string is redacted like a text line, fields included."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "INFO", *, banner: bool = True, json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if json else TextLines())
    handler.addFilter(RoutineAtDebug(banner=banner))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
