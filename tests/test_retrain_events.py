"""The retrain job's event stream when the bot process on the other end of the pipe is gone."""

from __future__ import annotations

import json
import logging
import os

import pytest

from training.retrain import EventWriter, StopFlag


def test_open_pipe_receives_event_lines() -> None:
    read_end, write_end = os.pipe()
    flag = StopFlag()
    with os.fdopen(write_end, "w", encoding="utf-8", buffering=1) as stream:
        EventWriter(stream, flag)({"event": "phase", "phase": "prepare"})
    with os.fdopen(read_end, encoding="utf-8") as reader:
        assert [json.loads(line) for line in reader] == [{"event": "phase", "phase": "prepare"}]
    assert not flag()


def test_closed_pipe_stops_as_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    flag = StopFlag()
    stream = os.fdopen(write_end, "w", encoding="utf-8", buffering=1)
    emit = EventWriter(stream, flag)

    with caplog.at_level(logging.WARNING, logger="training.retrain"):
        emit({"event": "progress", "step": 1})
        emit({"event": "cancelled", "reason": "later events are dropped"})
        stream.close()

    assert flag()
    assert flag.reason is not None
    assert "BrokenPipeError" in flag.reason
    warnings = [record.getMessage() for record in caplog.records if record.name == "training.retrain"]
    assert len(warnings) == 1
