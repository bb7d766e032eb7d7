"""Shared fixtures: a fresh database per test (SQLite, or PostgreSQL when
MAILGATEWAY_TEST_DATABASE_URL names a server), settings pointing into a temp
dir, a fixed clock, and the real Gateway.

PostgreSQL outlives test runs, so each run creates its own database and
drops it at the end; between tests its tables are truncated.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mailgateway.clock import FixedClock
from mailgateway.config import DatabaseSettings, Settings, settings_from_mapping
from mailgateway.db.migrate import upgrade
from mailgateway.db.models import Base
from mailgateway.db.session import create_db_engine
from mailgateway.service import Gateway

TEST_DATABASE_ENV = "MAILGATEWAY_TEST_DATABASE_URL"
REQUIRE_SERVERS_ENV = "MAILGATEWAY_REQUIRE_SERVERS"


def servers_required() -> bool:
    return os.environ.get(REQUIRE_SERVERS_ENV) == "1"


def skip_or_fail(reason: str) -> None:
    """Skip locally; under MAILGATEWAY_REQUIRE_SERVERS=1 (CI) a missing server is a failure."""
    if servers_required():
        pytest.fail(f"{reason} (MAILGATEWAY_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the run: a SQLite file to copy, or a fresh PostgreSQL database."""
    server_url = os.environ.get(TEST_DATABASE_ENV)
    if not server_url:
        path = tmp_path_factory.mktemp("db") / "template.db"
        url = f"sqlite:///{path}"
        engine = create_db_engine(DatabaseSettings(url=url))
        upgrade(engine)
        engine.dispose()
        yield url
        return
    with scratch_postgres(server_url, asked=True) as url:
        yield url


DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def scratch_postgres(server_url: str, *, asked: bool = False) -> Iterator[str]:
    """A fresh migrated database on the PostgreSQL server of `server_url`, dropped on exit.
    An unreachable server fails the test when the run was `asked` for it by name."""
    base = make_url(server_url)
    name = f"mg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        reason = (f"PostgreSQL at {base.render_as_string(hide_password=True)} is unreachable: "
                  f"{exc.__class__.__name__}")
        if asked:
            pytest.fail(reason)
        skip_or_fail(reason)
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(DatabaseSettings(url=url))
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(database_url: str) -> Iterator[str]:
    """A clean PostgreSQL database whatever the run's backend: the run's own, else a
    scratch one on the local server (`DEFAULT_POSTGRES`), for what only PostgreSQL has."""
    if not database_url.startswith("sqlite"):
        yield database_url
        return
    with scratch_postgres(DEFAULT_POSTGRES) as url:
        yield url


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> str:
    """A clean database for one test."""
    if database_template.startswith("sqlite"):
        source = Path(make_url(database_template).database or "")
        target = tmp_path / "mailgateway.db"
        shutil.copyfile(source, target)
        return f"sqlite:///{target}"
    engine = create_engine(database_template)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return database_template


@pytest.fixture
def config_data(tmp_path: Path, database_url: str) -> dict[str, Any]:
    """The configuration as a TOML-shaped dict; tests may change it before `settings`."""
    var = tmp_path / "var"
    return {
        "helpdesk": {
            "name": "Assistenza AM",
            "address": "assistenza@example.com",
            "domains": ["example.com"],
            "secret": "test-secret",
            "data_dir": str(var),
        },
        "database": {"url": database_url},
        "smtp": {"host": "127.0.0.1", "port": 0},
        "outbound": {"transport": "maildir", "maildir": str(var / "sent")},
        "groups": {"tecnica": {"address": "tecnici@example.com"}},
        "rules": {"path": str(tmp_path / "rules")},
        # Tests send the same request again and again for other ends; joining repeats
        # is tested where it is turned on (tests/pipeline/test_similar.py).
        "duplicates": {"action": "off"},
        "log": {"level": "warning"},
    }


@pytest.fixture
def settings(config_data: dict[str, Any]) -> Settings:
    return settings_from_mapping(config_data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(data: dict[str, Any], path: Path) -> Path:
    """A small TOML writer for the test configurations (tables of scalars, lists, [[imap]])."""
    lines: list[str] = []
    for section, table in data.items():
        if isinstance(table, list):
            for item in table:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            continue
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for name, sub in nested.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def config_file(config_data: dict[str, Any], tmp_path: Path) -> Path:
    """The same configuration as a file, for subprocesses (`mailgateway --config …`)."""
    return write_toml(config_data, tmp_path / "mailgateway.toml")


@pytest.fixture
def clock() -> FixedClock:
    """Monday 2 March 2026, 09:30 UTC (10:30 in Rome): office hours."""
    return FixedClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))


@pytest.fixture
def gateway(settings: Settings, clock: FixedClock) -> Iterator[Gateway]:
    gateway = Gateway(settings, clock)
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def every_log_level() -> Iterator[None]:
    """Log lines of every level reach the processors (and `capture_logs`), whatever
    level a test before configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(**saved)
