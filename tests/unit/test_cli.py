"""The command line lists every command, and a missing command module is an error."""

from __future__ import annotations

import pytest

from factbus import cli


def test_every_command_is_offered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in shown


def test_a_missing_command_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "vanished", "vanished")
    with pytest.raises(ModuleNotFoundError, match=r"factbus\.commands\.vanished"):
        cli.build_parser()
