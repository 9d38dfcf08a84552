"""The engine log line names what an engine is for, so the two engines of a bot start can be distinguished."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from storage.db import MIGRATION_ENGINE_PURPOSE, create_engine, default_database_url, upgrade_database, upgrade_database_async


def _engine_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "storage.db" and record.getMessage().startswith("created ")]


def test_migration_engine_says_purpose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = default_database_url(tmp_path)

    with caplog.at_level(logging.INFO, logger="storage.db"):
        upgrade_database(url)

    lines = _engine_lines(caplog)
    assert len(lines) == 1
    assert lines[0].endswith(f" for {MIGRATION_ENGINE_PURPOSE}")


async def test_engine_purpose_only_where_given(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = default_database_url(tmp_path)
    await upgrade_database_async(url)
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="storage.db"):
        plain = create_engine(url)
        named = create_engine(url, purpose="the bot's queries")
    await plain.dispose()
    await named.dispose()

    plain_line, named_line = _engine_lines(caplog)
    # The migration label does not leak out of upgrade_database.
    assert MIGRATION_ENGINE_PURPOSE not in plain_line
    assert plain_line.endswith("(WAL, busy_timeout=5000 ms)")
    assert named_line.endswith("(WAL, busy_timeout=5000 ms) for the bot's queries")
