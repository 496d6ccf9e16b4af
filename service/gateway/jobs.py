"""`POST /jobs` and `GET /jobs/{job}`."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service import tokens
from service.codec import encode, job_body, json_type
from service.config import Settings
from service.gateway.bearer import bearer_matches
from service.gateway.errors import HTTPFailure
from service.handlers import BUILTIN_HANDLERS, Limits, validate_builtin
from service.model import ErrorCode, is_job_id, seq_of_stream_id
from service.streams import JobStore

log = logging.getLogger(__name__)

KINDS_CACHE_S = 5.0
# An unknown kind's error names the kinds there are, up to this many (workers register them).
KINDS_SHOWN = 20


def read_position(job: str, token: str | None, after: str | None, settings: Settings) -> int:
    """What `GET /jobs/{job}` and its event stream check first, in the same order and with
    the same answers: the job id (400), its token (403), then `after` (400). Returns the
    sequence number to read after."""
    if not is_job_id(job):
        raise HTTPFailure(
            400,
            ErrorCode.BAD_REQUEST,
            "job id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
        )
    if not tokens.verify(job, token, settings.token_keys):
        raise HTTPFailure(403, ErrorCode.FORBIDDEN, "the token is not valid for this job")
    try:
        return seq_of_stream_id(after) if after else 0
    except ValueError as e:
        raise HTTPFailure(400, ErrorCode.BAD_REQUEST, f"after: {e}") from e


class Intake:
    """Validates submissions and reads jobs back; holds no Redis connection of its own."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._kinds: set[str] = set()
        self._kinds_read_at = float("-inf")
        self._limits = Limits(
            max_events=settings.max_events_per_job,
            max_event_bytes=settings.max_event_bytes,
            max_job_bytes=settings.max_job_bytes,
            max_run_s=settings.job_timeout_s,
        )

    async def submit(self, request: Request) -> Response:
        self._check_api_key(request)
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            # Also what keeps a cross-site form (which cannot send JSON) from submitting jobs.
            raise HTTPFailure(
                415,
                ErrorCode.BAD_REQUEST,
                "the body must be sent as Content-Type: application/json",
            )
        body = await self._read_body(request)
        try:
            submission = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise HTTPFailure(400, ErrorCode.BAD_REQUEST, f"body is not valid JSON: {e}") from e
        if not isinstance(submission, dict):
            raise HTTPFailure(
                400,
                ErrorCode.BAD_REQUEST,
                f"body must be a JSON object, got {json_type(submission)}",
            )
        kind = submission.get("kind")
        payload = submission.get("payload", {})
        if not isinstance(kind, str) or not kind:
            raise HTTPFailure(400, ErrorCode.BAD_REQUEST, "field 'kind' must be a non-empty string")
        if not isinstance(payload, dict):
            raise HTTPFailure(
                400,
                ErrorCode.BAD_REQUEST,
                f"field 'payload' must be a JSON object, got {json_type(payload)}",
            )
        try:
            stored = orjson.dumps(payload)
        except orjson.JSONEncodeError as e:  # parsing allows deeper nesting than encoding
            raise HTTPFailure(
                400, ErrorCode.BAD_REQUEST, f"payload cannot be stored: {e} (nested too deeply)"
            ) from e
        await self._check_kind(kind)
        problem = self._validate(kind, payload)
        if problem:
            raise HTTPFailure(400, ErrorCode.BAD_REQUEST, problem)
        job = await self.store.submit(kind, stored)
        token = tokens.sign(job, self.settings.secret_key)
        return Response(encode({"job": job, "token": token}), 202, media_type="application/json")

    async def read(self, request: Request) -> Response:
        job = request.path_params["job"]
        params = request.query_params
        after_seq = read_position(job, params.get("token"), params.get("after"), self.settings)
        snapshot = await self.store.snapshot(
            job,
            after_seq,
            max_events=self.settings.max_replay_events,
            max_bytes=self.settings.max_send_queue_bytes,
        )
        if snapshot is None:
            raise HTTPFailure(
                404, ErrorCode.NOT_FOUND, "no such job (unknown, or its results expired)"
            )
        if after_seq > snapshot.last_seq:
            raise HTTPFailure(
                410,
                ErrorCode.GONE,
                "the position asked for is past the job's last event; "
                "its results were rewound and cannot be served in full",
            )
        body = job_body(job, snapshot.status.value, snapshot.frames, more=snapshot.more)
        return Response(body, 200, media_type="application/json")

    def _check_api_key(self, request: Request) -> None:
        keys = self.settings.api_keys
        if keys and not bearer_matches(request, keys):
            raise HTTPFailure(
                401,
                ErrorCode.UNAUTHORIZED,
                "a valid API key is required: Authorization: Bearer <key>",
            )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = HTTPFailure(413, ErrorCode.TOO_LARGE, f"request body is over {limit} bytes")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large
        except ClientDisconnect:
            # The client's own doing: no answer can reach it, and it is not our error.
            log.info("a client went away before sending its whole request body")
            raise HTTPFailure(
                400, ErrorCode.BAD_REQUEST, "the request body was not sent in full"
            ) from None
        return bytes(body)

    async def _check_kind(self, kind: str) -> None:
        if kind in BUILTIN_HANDLERS:
            return
        now = time.monotonic()
        if kind not in self._kinds and now - self._kinds_read_at > KINDS_CACHE_S:
            self._kinds = await self.store.registered_kinds()
            self._kinds_read_at = now
        if kind not in self._kinds:
            known = sorted(set(BUILTIN_HANDLERS) | self._kinds)
            shown = ", ".join(known[:KINDS_SHOWN]) + (", ..." if len(known) > KINDS_SHOWN else "")
            raise HTTPFailure(
                400,
                ErrorCode.UNKNOWN_KIND,
                f"unknown job kind {kind[:64]!r}: no worker has registered it (known: {shown})",
            )

    def _validate(self, kind: str, payload: dict[str, Any]) -> str | None:
        return validate_builtin(kind, payload, self._limits)
