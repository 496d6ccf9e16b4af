"""Log lines as JSON (`LOG_FORMAT=json`): the fields a line is about, and the same redaction
of secrets as text lines, in the message, the fields and a traceback alike."""

from __future__ import annotations

import json
import logging

import pytest

from service import logs

SECRETS = ("s3cret-pw", "tok3n-value")


@pytest.mark.parametrize("as_json", [False, True])
def test_no_password_or_token_survives_in_either_format(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    logs.configure("INFO", json=as_json)
    try:
        log = logging.getLogger("resultcast.test")
        log.warning(
            "cannot reach redis://app:s3cret-pw@redis:6379/0 for /jobs/j1?token=tok3n-value",
            extra={"job": "j1", "url": "rediss://u:s3cret-pw@host/0", "cause": "reconnect"},
        )
        try:
            raise RuntimeError("GET /jobs/j1/events?token=tok3n-value failed")
        except RuntimeError:
            log.exception("with a traceback", extra={"code": 1011})
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert not [secret for secret in SECRETS if secret in err], err
    if as_json:
        first, second = (json.loads(line) for line in err.splitlines() if line.startswith("{"))
        assert first["level"] == "WARNING" and first["logger"] == "resultcast.test"
        assert first["job"] == "j1" and first["cause"] == "reconnect"
        assert first["url"] == "rediss://u:***@host/0"
        assert "redis://app:***@redis:6379/0" in first["message"]
        assert first["time"].endswith("+00:00")
        assert second["code"] == 1011 and "RuntimeError" in second["exception"]
    else:
        assert "WARNING resultcast.test: cannot reach redis://app:***@redis" in err
