"""Settings: defaults from the contract, clear errors, no secrets in repr."""

from __future__ import annotations

import subprocess

import pytest

from service.config import ConfigError, Settings
from service.processes import SERVICE
from tests.conftest import PYTHON, ROOT


def test_contract_defaults() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.delivery_mode == "pubsub"
    assert s.api_keys == ()
    assert s.idle_timeout_s == 300
    assert s.result_ttl_s == 86400
    assert s.max_frame_bytes == 1024 * 1024
    assert s.max_watches_per_socket == 100
    assert s.max_bad_frames_per_min == 60
    assert s.max_send_queue_bytes == 4 * 1024 * 1024


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "DELIVERY_MODE": "XREAD",
            "API_KEYS": "a, b,,c",
            "IDLE_TIMEOUT_S": "2.5",
            "RESULT_TTL_S": "60",
            "REDIS_URL": "rediss://user:pw@host:6380/1",
        }
    )
    assert (s.delivery_mode, s.api_keys, s.idle_timeout_s, s.result_ttl_s) == (
        "xread",
        ("a", "b", "c"),
        2.5,
        60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RESULT_TTL_S": "a day"}, "RESULT_TTL_S: expected an integer, got 'a day'"),
        ({"IDLE_TIMEOUT_S": "-1"}, "IDLE_TIMEOUT_S: expected a positive number, got -1.0"),
        ({"DELIVERY_MODE": "poll"}, "DELIVERY_MODE: expected one of pubsub, xread, got 'poll'"),
        ({"REDIS_URL": "http://x:secretpw@h"}, "REDIS_URL: expected a URL starting with"),
        ({"KEY_PREFIX": "a{b}"}, "KEY_PREFIX: expected a plain name"),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(
        ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ) as error:
        Settings.from_env(env)
    assert "secretpw" not in str(error.value)


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env(
        {"SECRET_KEY": "s3cret", "API_KEYS": "k3y", "REDIS_URL": "redis://:pw0rd@h"}
    )
    shown = repr(s)
    assert "s3cret" not in shown and "k3y" not in shown and "pw0rd" not in shown


def test_gateway_needs_a_secret_key() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY: required"):
        Settings.from_env({}).require_secret_key()


def test_cli_reports_configuration_errors() -> None:
    result = subprocess.run(
        [*SERVICE, "worker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"RESULT_TTL_S": "x", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "configuration error: RESULT_TTL_S: expected an integer, got 'x'"
    )


def _run_without_dev_extras(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ...` as an install without the dev/bench extras would run it."""
    code = (
        "import runpy, sys\n"
        "for name in ('httpx', 'matplotlib', 'hypothesis', 'pytest'):\n"
        "    sys.modules[name] = None  # import fails, as if not installed\n"
        f"sys.argv = ['service', *{list(args)!r}]\n"
        "runpy.run_module('service', run_name='__main__')\n"
    )
    return subprocess.run(
        [PYTHON, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "command",
    [
        "--help",
        "gateway --help",
        "worker --help",
        "migrate --help",
        "dev --help",
        "bench --help",
        "watch --help",
        "submit --help",
        "healthcheck --help",
    ],
)
def test_every_command_works_without_the_dev_extras(command: str) -> None:
    result = _run_without_dev_extras(*command.split())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_the_client_commands_without_httpx_say_what_to_install() -> None:
    result = _run_without_dev_extras("watch", "job", "--token", "t")
    assert result.returncode == 2
    assert "httpx is missing" in result.stderr, result.stderr
    # resultcast is not on an index: from a checkout, or from a wheel.
    assert "pip install -e '.[client]'" in result.stderr, result.stderr
    assert "py3-none-any.whl[client]'" in result.stderr, result.stderr


def test_bench_without_its_extras_says_what_to_install() -> None:
    result = _run_without_dev_extras("bench", "--idle-seconds", "1")
    assert result.returncode == 2
    assert "needs the bench extra (httpx is missing)" in result.stderr, result.stderr
    assert "pip install -c constraints.txt -e '.[bench]'" in result.stderr, result.stderr


def test_bench_says_it_will_flush_the_redis_it_is_given() -> None:
    url = "redis://u:s3cret@127.0.0.1:1/0"
    result = subprocess.run(
        [*SERVICE, "bench", "--redis-url", url, "--modes", "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # the unknown mode, after the warning
    assert "bench: redis://u:***@127.0.0.1:1/0 will be FLUSHED" in result.stderr, result.stderr
    assert "s3cret" not in result.stderr
