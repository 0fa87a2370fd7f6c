"""hsmd.service: JSON logs, ready files, PIN input from files and env only."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from hsmd.errors import InvalidArgument
from hsmd.service import read_secret_input, setup_logging, wait_for_ready_file, write_ready_file


def test_json_logs_carry_extra_fields() -> None:
    stream = io.StringIO()
    log = setup_logging("test", stream=stream)
    log.info("hello", extra={"path": "team/db"})
    entry = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert entry["message"] == "hello"
    assert entry["path"] == "team/db"
    assert entry["component"] == "test"
    assert entry["level"] == "info"
    logging.getLogger().handlers.clear()


def test_ready_file_roundtrip(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ready.json"
    write_ready_file(str(target), {"grpc": "127.0.0.1:1"})
    assert wait_for_ready_file(target, timeout=1)["grpc"] == "127.0.0.1:1"
    with pytest.raises(TimeoutError):
        wait_for_ready_file(tmp_path / "never.json", timeout=0.1)


def test_pin_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("123456\n")
    assert read_secret_input(file=str(pin_file)) == "123456"
    monkeypatch.setenv("TEST_PIN", "654321")
    assert read_secret_input(env="TEST_PIN") == "654321"


def test_pin_errors_never_show_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        read_secret_input()
    with pytest.raises(InvalidArgument, match="exactly one"):
        read_secret_input(file="x", env="Y")
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_secret_input(file=str(tmp_path / "absent"))
    with pytest.raises(InvalidArgument, match="not set"):
        read_secret_input(env="HSMD_SURELY_UNSET_VARIABLE")
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(InvalidArgument, match="empty"):
        read_secret_input(file=str(empty))
