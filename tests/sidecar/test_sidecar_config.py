"""The sidecar's TOML file: the issue's example parses; every bad key is refused
with a ConfigError naming it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from factbus.errors import ConfigError
from factbus.sidecar.config import ColumnSpec, UnlessSpec, load_config, parse_config

EXAMPLE = """
[factbus]
transport = "kafka://127.0.0.1:9092"
store = "sqlite:///app.db"
topic = "shop"
node = "pod-1"

[sidecar]
listen = "127.0.0.1:8081"

[[sidecar.table]]
name = "orders"
fact = "Shop.Order"
columns = { number = "fields.number", customer = "predecessors.customer" }
unless = ["Shop.Order.Cancelled.order"]

[[sidecar.property]]
table = "orders"
column = "status"
fact = "Shop.Order.Status"
entity = "order"
value = "fields.value"
prior = "prior"
"""


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE)


def test_the_issue_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.factbus["topic"] == "shop"
    assert config.listen == "127.0.0.1:8081"
    assert config.jinaga is None and config.outbox is None and config.catch_up == ()
    (orders,) = config.tables
    assert orders.name == "orders" and orders.fact == "Shop.Order"
    assert orders.columns == (
        ColumnSpec("number", "fields.number"),
        ColumnSpec("customer", "predecessors.customer"),
    )
    assert orders.unless == (UnlessSpec("Shop.Order.Cancelled", "order"),)
    (status,) = config.properties
    assert (status.table, status.column, status.fact, status.entity, status.prior) == (
        "orders",
        "status",
        "Shop.Order.Status",
        "order",
        "prior",
    )
    assert status.value.path == ("value",)
    assert status.candidates_column == "status_candidates"
    assert config.raw["sidecar"]["listen"] == "127.0.0.1:8081"
    settings = config.settings()
    assert settings.topic == "shop" and settings.node_name == "pod-1"


def test_optional_keys_and_nested_unless() -> None:
    doc = example()
    doc["sidecar"].update(
        jinaga="/jinaga", outbox="outbox", catch_up=["http://peer:8081", "https://p2"]
    )
    doc["sidecar"]["table"][0]["unless"] = [
        {
            "fact": "Shop.Order.Cancelled",
            "role": "order",
            "unless": ["Shop.Order.Cancelled.Revoked.cancelled"],
        }
    ]
    doc["sidecar"]["table"][0]["columns"]["city"] = "fields.address.city"
    doc["jinaga"] = {"url": "http://localhost:8080/jinaga"}
    config = parse_config(doc)
    assert config.jinaga == "/jinaga" and config.outbox == "outbox"
    assert config.catch_up == ("http://peer:8081", "https://p2")
    assert config.tables[0].unless == (
        UnlessSpec(
            "Shop.Order.Cancelled",
            "order",
            (UnlessSpec("Shop.Order.Cancelled.Revoked", "cancelled"),),
        ),
    )
    assert config.tables[0].columns[-1].path == ("address", "city")
    assert config.raw["jinaga"] == {"url": "http://localhost:8080/jinaga"}


def set_key(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split("/")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    target[parts[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("colour", "red", "colour: unknown key"),
        ("factbus/colour", 1, "factbus.colour: unknown key"),
        ("sidecar/colour", 1, "sidecar.colour: unknown key"),
        ("sidecar/table/0/colour", 1, "sidecar.table[0].colour: unknown key"),
        ("sidecar/property/0/colour", 1, "sidecar.property[0].colour: unknown key"),
        ("sidecar/listen", "8081", "sidecar.listen"),
        ("sidecar/listen", "host:99999", "sidecar.listen: port 99999 is not from 1 to 65535"),
        ("sidecar/listen", "127.0.0.1:0", "sidecar.listen: port 0 is not from 1 to 65535"),
        ("sidecar/jinaga", "jinaga", "sidecar.jinaga"),
        ("sidecar/outbox", "Out Box", "sidecar.outbox"),
        ("sidecar/catch_up", "http://peer", "sidecar.catch_up"),
        ("sidecar/catch_up", ["ftp://peer"], "sidecar.catch_up[0]"),
        ("sidecar/table", {"name": "x"}, "sidecar.table: must be an array of tables"),
        ("sidecar/table/0/name", "Orders", "sidecar.table[0].name"),
        ("sidecar/table/0/name", "factbus_orders", "sidecar.table[0].name"),
        ("sidecar/table/0/fact", "", "sidecar.table[0].fact: must not be empty"),
        ("sidecar/table/0/fact", 3, "sidecar.table[0].fact: must be a string"),
        ("sidecar/table/0/columns", ["number"], "sidecar.table[0].columns: must be a table"),
        ("sidecar/table/0/columns/hash", "fields.hash", "sidecar.table[0].columns.hash"),
        ("sidecar/table/0/columns/number", "number", "sidecar.table[0].columns.number"),
        ("sidecar/table/0/columns/number", "fields.a..b", "sidecar.table[0].columns.number"),
        ("sidecar/table/0/columns/Bad", "fields.a", "sidecar.table[0].columns.Bad"),
        ("sidecar/table/0/unless", "Shop.Order.Cancelled.order", "sidecar.table[0].unless"),
        ("sidecar/table/0/unless", ["cancelled"], "sidecar.table[0].unless[0]"),
        (
            "sidecar/table/0/unless",
            [{"fact": "A", "role": "r", "unless": [{"fact": "B", "role": "s"}]}],
            "sidecar.table[0].unless[0].unless[0]",
        ),
        ("sidecar/table/0/unless", [{"fact": "A"}], "sidecar.table[0].unless[0].role: missing"),
        ("sidecar/property/0/table", "nope", "sidecar.property[0].table"),
        ("sidecar/property/0/column", "number", "sidecar.property[0].column"),
        ("sidecar/property/0/entity", 1, "sidecar.property[0].entity: must be a string"),
        ("sidecar/property/0/value", "value", "sidecar.property[0].value"),
        ("sidecar/property/0/prior", "order", "sidecar.property[0].prior"),
    ],
)
def test_bad_keys_are_named(path: str, value: Any, named: str) -> None:
    doc = example()
    set_key(doc, path, value)
    with pytest.raises(ConfigError) as raised:
        parse_config(doc)
    assert named in str(raised.value)


def test_missing_required_keys_and_duplicates() -> None:
    doc = example()
    del doc["sidecar"]["property"][0]["fact"]
    with pytest.raises(ConfigError, match=r"sidecar\.property\[0\]\.fact: missing"):
        parse_config(doc)
    doc = example()
    doc["sidecar"]["table"].append(dict(doc["sidecar"]["table"][0]))
    with pytest.raises(ConfigError, match=r"sidecar\.table\[1\]\.name: table 'orders'"):
        parse_config(doc)
    doc = example()
    doc["sidecar"]["table"][0]["columns"]["status_candidates"] = "fields.x"
    with pytest.raises(ConfigError, match=r"columns\.status_candidates"):
        parse_config(doc)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sidecar\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_settings_follow_arguments_then_environment_then_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The project rule (factbus.config.Settings.load): arguments beat FACTBUS_*
    variables, which beat the TOML file; [sidecar] catch_up counts as file."""
    doc = example()
    doc["sidecar"]["catch_up"] = ["http://peer:8081"]
    config = parse_config(doc)
    unrelated = tmp_path / "other.toml"
    unrelated.write_text('[factbus]\ntopic = "from-factbus-config"\n')
    monkeypatch.setenv("FACTBUS_CONFIG", str(unrelated))  # not this sidecar's file
    monkeypatch.setenv("FACTBUS_STORE", "sqlite:///from-env.db")
    monkeypatch.setenv("FACTBUS_NODE", "pod-from-env")
    monkeypatch.delenv("FACTBUS_TOPIC", raising=False)
    monkeypatch.delenv("FACTBUS_CATCH_UP", raising=False)
    settings = config.settings()
    assert settings.store_url == "sqlite:///from-env.db"  # environment beats the file
    assert settings.node_name == "pod-from-env"
    assert settings.topic == "shop"  # the file, where no variable is set
    assert settings.catch_up == ("http://peer:8081",)
    assert config.settings(node="pod-from-argument").node_name == "pod-from-argument"
    from factbus.sidecar.service import Sidecar

    assert Sidecar(config, http=False).settings == settings  # one precedence, everywhere
