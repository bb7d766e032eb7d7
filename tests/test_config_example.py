"""config.example.toml documents every key, and loads as it is."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mailgateway.config import (
    GroupSettings,
    ImapSettings,
    Settings,
    load_settings,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def _keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_example_loads() -> None:
    load_settings(EXAMPLE)


def test_the_example_names_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    written = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))
    sections = {f.name: f.type for f in dataclasses.fields(Settings)}
    expected: set[str] = set()
    for name in sections:
        value = getattr(Settings(), name)
        if dataclasses.is_dataclass(value):
            expected |= _keys(type(value))
    expected |= _keys(ImapSettings) | _keys(GroupSettings)
    assert expected - written == set()
