"""The exact versions a requirements file pins."""

from __future__ import annotations

from pathlib import Path


def read_pins(path: Path) -> dict[str, str]:
    """Package name (lower case) -> pinned version; a line not pinned with == fails the test."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-r"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not pinned with =="
        pins[name.lower()] = version
    return pins
