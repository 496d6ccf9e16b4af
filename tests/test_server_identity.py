"""The server identity a gateway's connections report: real Redis, with and without INFO."""

from __future__ import annotations

import logging

import pytest

from service.redis_client import RedisFactory
from service.server_identity import ServerIdentity
from tests.conftest import make_settings
from tests.redis_servers import RedisServer


def test_a_new_run_or_replication_id_is_a_new_generation() -> None:
    identity = ServerIdentity()
    identity.observe(b"a" * 40, b"r" * 40)
    identity.observe(b"a" * 40, b"r" * 40)
    assert identity.generation == 0
    identity.observe(b"b" * 40, b"r" * 40)  # restarted, or another server
    identity.observe(b"b" * 40, b"s" * 40)  # same server, data replaced by a resync
    assert identity.generation == 2
    identity.observe(None, None)  # unknown: no change
    assert identity.generation == 2


async def test_connections_report_the_server_they_reach(redis_server: RedisServer) -> None:
    factory = RedisFactory(make_settings(redis_server.url), "gateway")
    client = factory.commands()
    await client.ping()
    info = await client.info("server")
    await client.aclose()
    assert factory.identity is not None
    assert factory.identity.run_id == info["run_id"].encode()
    assert factory.identity.generation == 0


async def test_a_user_without_info_connects_and_is_warned_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis_server.client()
    rules = ["on", ">s3cret-pw", "~*", "&*", "+@all", "-info"]
    await admin.execute_command("ACL", "SETUSER", "noinfo", *rules)
    await admin.aclose()
    url = f"redis://noinfo:s3cret-pw@127.0.0.1:{redis_server.port}/0"
    factory = RedisFactory(make_settings(url), "gateway")
    client = factory.commands()
    with caplog.at_level(logging.WARNING):
        assert await client.ping()
        await client.set("k", "v")  # the connection works for everything else
    await client.aclose()
    assert factory.identity is not None and factory.identity.run_id is None
    warnings = [r.getMessage() for r in caplog.records if "run id" in r.getMessage()]
    assert len(warnings) == 1 and "s3cret" not in warnings[0]
