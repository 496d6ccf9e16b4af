"""Print the installed packages whose version differs from the lock: `name lock -> installed`."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (spec,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def main() -> None:
    pins = locked(Path(sys.argv[1]))
    changed = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and pins[name] != dist.version:
            changed.append(f"{name} {pins[name]} -> {dist.version}")
    print(", ".join(sorted(changed)))


if __name__ == "__main__":
    main()
