"""Settings precedence and credential redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from factbus import ConfigError, Settings
from factbus.urls import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("kafka://u:p@h1:9092,h2:9092?partitions=3", "kafka://u:***@h1:9092,h2:9092?partitions=3"),
        ("kafka://h:9092?sasl_password=s3cret&x=1", "kafka://h:9092?sasl_password=***&x=1"),
        ("postgresql://factbus:pw@127.0.0.1/db", "postgresql://factbus:***@127.0.0.1/db"),
        ("memory://ns", "memory://ns"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_precedence_arguments_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "factbus.toml"
    config.write_text('[factbus]\ntopic = "from-file"\nbatch_size = 7\nnode = "file-node"\n')
    monkeypatch.setenv("FACTBUS_TOPIC", "from-env")
    monkeypatch.setenv("FACTBUS_CONSUME", "false")
    settings = Settings.load(config, node="arg-node")
    assert settings.topic == "from-env"
    assert settings.batch_size == 7
    assert settings.node == "arg-node"
    assert settings.consume is False
    assert settings.store_url == "sqlite:///.factbus/arg-node.db"


def test_bad_settings_are_specific(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTBUS_BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match="FACTBUS_BATCH_SIZE='many' is not a valid int"):
        Settings.load()
    monkeypatch.delenv("FACTBUS_BATCH_SIZE")
    with pytest.raises(ConfigError, match="unknown settings: colour"):
        Settings.load(colour="blue")
    with pytest.raises(ConfigError, match="batch_size"):
        Settings.load(batch_size=0)
