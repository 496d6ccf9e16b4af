"""compose.yaml passes every setting through, with the service's own defaults."""

from __future__ import annotations

import re
from dataclasses import fields

from service.config import DEFAULTS, Settings
from tests.conftest import ROOT

# Settings whose compose default differs from the service's on purpose.
DEPLOYMENT_DEFAULTS = {
    "REDIS_URL": "redis://redis:6379/0",  # the compose network's Redis
    "SECRET_KEY": None,  # required: `${SECRET_KEY:?...}`
}


def compose_settings() -> dict[str, str | None]:
    text = (ROOT / "compose.yaml").read_text()
    block = text.split("x-settings: &settings\n", 1)[1].split("\n\n", 1)[0]
    found: dict[str, str | None] = {}
    for line in block.splitlines():
        match = re.fullmatch(r"  ([A-Z_]+): \$\{([A-Z_]+)(?::-(.*)|:\?.*)\}", line)
        assert match is not None, f"not a pass-through setting: {line!r}"
        name, source, default = match.groups()
        assert name == source, line
        found[name] = default
    return found


def test_compose_passes_every_setting_with_the_service_defaults() -> None:
    passed = compose_settings()
    for f in fields(Settings):
        name = f.metadata["env"]
        assert name in passed, f"compose.yaml does not pass {name}"
        default = passed[name]
        if name in DEPLOYMENT_DEFAULTS:
            assert default == DEPLOYMENT_DEFAULTS[name], name
            continue
        assert default is not None, name
        parsed = getattr(Settings.from_env({name: default}), f.name)
        assert parsed == DEFAULTS[f.name], (
            f"{name}: compose {default!r}, service {DEFAULTS[f.name]!r}"
        )
