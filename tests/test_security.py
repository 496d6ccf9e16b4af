"""TLS with certificate verification, Redis ACL users, and secrets kept out of logs."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import DELIVERY_MODES
from service.keys import Keys
from service.migrate import migrate
from service.model import RedisUnavailable
from service.processes import SERVICE
from service.redis_client import RedisFactory, redis_errors
from tests.conftest import ROOT, make_settings, service_env, wait_for
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer, free_port
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()
PASSWORD = "s3cret-Pa55word"


def make_certificates(directory: Path) -> dict[str, Path]:
    """A private CA and a server certificate for localhost, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        name: directory / name
        for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext.cnf")
    }
    paths["ext.cnf"].write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(paths["ca.key"]),
        "-out",
        str(paths["ca.crt"]),
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(paths["server.key"]),
        "-out",
        str(paths["server.csr"]),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(paths["server.csr"]),
        "-CA",
        str(paths["ca.crt"]),
        "-CAkey",
        str(paths["ca.key"]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(paths["ext.cnf"]),
        "-out",
        str(paths["server.crt"]),
    )
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    certs = make_certificates(tmp_path / "certs")
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        args=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs["server.crt"]),
            "--tls-key-file",
            str(certs["server.key"]),
            "--tls-ca-cert-file",
            str(certs["ca.crt"]),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "app",
            "on",
            f">{PASSWORD}",
            "~*",
            "&*",
            "+@all",
        ),
    )
    server.start()
    try:
        yield server, tls_port, certs["ca.crt"]
    finally:
        server.stop()


@pytest.mark.slow
async def test_the_stack_runs_over_tls_as_an_acl_user(
    tls_redis: tuple[RedisServer, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, tls_port, ca = tls_redis
    url = f"rediss://app:{PASSWORD}@localhost:{tls_port}/0?ssl_ca_certs={ca}"
    settings = make_settings(url)
    caplog.set_level(logging.DEBUG)
    client = RedisFactory(settings, "migrate").commands()
    await migrate(client, KEYS, report=lambda _: None)
    await client.aclose()
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 5})
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job})
    assert_exact(got[job][1:], job, 5)
    assert PASSWORD not in caplog.text
    assert token not in caplog.text


async def test_certificates_are_verified_and_passwords_never_logged(
    tls_redis: tuple[RedisServer, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, tls_port, _ = tls_redis
    caplog.set_level(logging.DEBUG)
    # No CA given: the server's certificate cannot be verified, so no connection is made.
    unverified = make_settings(f"rediss://app:{PASSWORD}@localhost:{tls_port}/0")
    client = RedisFactory(unverified, "gateway").commands()
    with pytest.raises(RedisUnavailable), redis_errors("ping"):
        await client.ping()
    await client.aclose()
    assert "certificate verify failed" in caplog.text.lower()
    # A wrong password is refused, and neither password shows up anywhere in the logs.
    wrong = make_settings(f"redis://app:not-{PASSWORD}@127.0.0.1:{tls_redis[0].port}/0")
    client = RedisFactory(wrong, "gateway").commands()
    with pytest.raises(Exception, match=r"(?i)invalid|WRONGPASS|auth"):
        await client.ping()
    await client.aclose()
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_tokens_in_urls_are_masked_in_the_gateway_log(
    redis_server: RedisServer, tmp_path: Path, log_format: str
) -> None:
    client = redis_server.client()
    await migrate(client, KEYS, report=lambda _: None)
    await client.aclose()
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, then polled over HTTP
            [*SERVICE, "gateway", "--port", str(port)],
            env=service_env(redis_server.url, LOG_FORMAT=log_format),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            await wait_for(lambda: _up(http), what="the gateway")
            reply = (await http.post("/jobs", json={"kind": "echo", "payload": {}})).json()
            assert (
                await http.get(f"/jobs/{reply['job']}", params={"token": reply["token"]})
            ).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    text = log_path.read_text()
    assert f"/jobs/{reply['job']}?token=***" in text
    assert reply["token"] not in text
    if log_format == "json":  # one object per line, each with the four keys
        lines = [json.loads(line) for line in text.splitlines()]
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        assert any(line["logger"] == "uvicorn.access" for line in lines)


async def _up(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("mode", DELIVERY_MODES)
async def test_the_stack_runs_as_a_user_without_info(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Managed Redis often denies `INFO`: workers and gateway still deliver every event once,
    each connection factory says once that the identity check is off, and no password leaks."""
    admin = redis_server.client()
    rules = ["on", f">{PASSWORD}", "~*", "&*", "+@all", "-info"]
    await admin.execute_command("ACL", "SETUSER", "noinfo", *rules)
    await migrate(admin, KEYS, report=lambda _: None)
    await admin.aclose()
    url = f"redis://noinfo:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    settings = make_settings(url, delivery_mode=mode, xread_block_ms=500)
    caplog.set_level(logging.INFO)
    async with running_worker(settings), running_gateway(settings) as base:
        jobs = [await submit(base, "count", {"n": 20, "interval_ms": 5}) for _ in range(3)]
        async with connect(base) as ws, httpx.AsyncClient(base_url=base) as http:
            for job, token in jobs:
                await ws.watch(job, token)
            got = await ws.events_until_terminal({job for job, _ in jobs})
            ready = await http.get("/readyz")
            metrics = await http.get("/metrics")
    for job, _ in jobs:
        assert_exact(got[job][1:], job, 20)
    assert ready.status_code == 200 and metrics.status_code == 200
    warned = [r.getMessage() for r in caplog.records if "run id" in r.getMessage()]
    assert len(warned) == 1, warned  # only the gateway reads it (workers do not need it)
    assert "failover detection" in warned[0]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert PASSWORD not in caplog.text
