"""``buzzer serve`` refuses settings the environment got wrong with one line per setting,
named as it is set and without its value, and exit code 2: no traceback, no secret."""

from __future__ import annotations

import pytest

from buzzer.cli import main


def test_bad_settings_are_named_without_their_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BUZZER_XREAD_BLOCK_MS", "6000")
    monkeypatch.setenv("BUZZER_PARTITIONS", "hunter2-not-a-number")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "push"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "buzzer serve: settings refused" in err
    assert "BUZZER_XREAD_BLOCK_MS: Input should be less than or equal to 4000" in err
    assert "BUZZER_PARTITIONS: " in err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_every_command_that_reads_settings_refuses_them_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BUZZER_PARTITIONS", "0")
    with pytest.raises(SystemExit) as exited:
        main(["db", "migrate"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "buzzer db: settings refused\n  BUZZER_PARTITIONS: Input should be greater than" in err
