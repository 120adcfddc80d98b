"""The sidecar's TOML file: ``[factbus]`` (Bus settings) and ``[sidecar]`` (views, HTTP).

:func:`load_config` reads a file, :func:`parse_config` a mapping (the parsed
TOML document). Every key is checked: an unknown key, a wrong type or a bad
name raises :class:`~factbus.errors.ConfigError` naming the key (its TOML path,
e.g. ``sidecar.table[0].columns.number``) and what is wrong. Nothing is
connected or created here.

Keys (see the README's sidecar section for the full reference)::

    [factbus]               any Bus setting (transport, store, topic, node, group, ...)
    [sidecar]
    listen = "127.0.0.1:8081"   host:port of the HTTP API
    jinaga = "/jinaga"          optional: mount Jinaga's HTTP protocol under this prefix
    outbox = "outbox"           optional: name of the outbox table the app inserts into
    catch_up = ["http://peer:8081"]   optional: peers to catch up from on start
    [[sidecar.table]]           name, fact, columns = {col = "fields.a.b" | "predecessors.role"},
                                unless = ["Type.role", {fact, role, unless = ["Type.role"]}]
    [[sidecar.property]]        table, column, fact, entity, value, prior
    [jinaga]                    the Jinaga bridge's own table (kept in ``raw``)

A ``unless`` entry ``"Shop.Order.Cancelled.order"`` splits at the last dot
into the successor's type and the role naming the row's fact. The table form
``{fact = "Shop.Order.Cancelled", role = "order", unless = ["X.Revoked.cancelled"]}``
adds the successor's own ``unless``, one level deep: a cancellation that is
itself revoked no longer hides the row.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from factbus.config import Settings
from factbus.errors import ConfigError

IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*\Z")
"""Table and column names: lower case, so they read the same unquoted in SQLite
and PostgreSQL."""
MAX_IDENTIFIER: Final = 48
"""PostgreSQL truncates names at 63 bytes; room is left for ``_candidates`` and
the ``__new`` suffix rebuild uses."""
RESERVED_COLUMNS: Final = frozenset({"hash"})

_TOP_KEYS: Final = ("factbus", "sidecar", "jinaga")
_SIDECAR_KEYS: Final = ("listen", "jinaga", "outbox", "catch_up", "table", "property")
_TABLE_KEYS: Final = ("name", "fact", "columns", "unless")
_UNLESS_KEYS: Final = ("fact", "role", "unless")
_PROPERTY_KEYS: Final = ("table", "column", "fact", "entity", "value", "prior")
_LISTEN: Final = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})\Z")


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A view column and where its value comes from.

    ``source`` is ``fields.<dotted.path>`` (the value at that path; missing
    means NULL) or ``predecessors.<role>`` (the predecessor's hash; a role
    holding a list gives a JSON array of hashes in the fact's order).
    """

    name: str
    source: str

    @property
    def kind(self) -> Literal["fields", "predecessors"]:
        return "fields" if self.source.startswith("fields.") else "predecessors"

    @property
    def path(self) -> tuple[str, ...]:
        """The path below ``fields`` (or the one-element role)."""
        head, _, rest = self.source.partition(".")
        return tuple(rest.split(".")) if head == "fields" else (rest,)


@dataclass(frozen=True, slots=True)
class UnlessSpec:
    """Hide a row while a fact of type ``fact`` names it in role ``role``, unless
    that successor is itself hidden by one of its own ``unless`` (one level)."""

    fact: str
    role: str
    unless: tuple[UnlessSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class TableSpec:
    """``[[sidecar.table]]``: one row per fact of type ``fact``, keyed by ``hash``."""

    name: str
    fact: str
    columns: tuple[ColumnSpec, ...] = ()
    unless: tuple[UnlessSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """``[[sidecar.property]]``: a convergent mutable column of ``table``.

    Facts of type ``fact`` name the row's fact in role ``entity`` and the values
    they replace in role ``prior``; ``value`` is a column source (usually
    ``fields.value``). The column holds the greatest-hash leaf's value and
    ``<column>_candidates`` every leaf's value (JSON array, by hash).
    """

    table: str
    column: str
    fact: str
    entity: str
    value: ColumnSpec
    prior: str

    @property
    def candidates_column(self) -> str:
        return f"{self.column}_candidates"


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """A checked sidecar configuration (see the module docstring for the keys)."""

    factbus: dict[str, Any]
    listen: str = "127.0.0.1:8081"
    jinaga: str | None = None
    outbox: str | None = None
    catch_up: tuple[str, ...] = ()
    tables: tuple[TableSpec, ...] = ()
    properties: tuple[PropertySpec, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> TableSpec:
        """The table called ``name``. :raises KeyError: no such table."""
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def properties_of(self, table: str) -> tuple[PropertySpec, ...]:
        return tuple(p for p in self.properties if p.table == table)

    def settings(self, **overrides: Any) -> Settings:
        """The Bus :class:`~factbus.config.Settings`: ``overrides``, then ``FACTBUS_*``
        environment variables (so a Deployment's Secret overrides what the
        ConfigMap says), then this file's ``[factbus]`` table and ``[sidecar]
        catch_up``, then defaults (:meth:`Settings.load`'s rule; ``FACTBUS_CONFIG``
        is not read: this file is the file)."""
        table = dict(self.factbus)
        if self.catch_up:
            table["catch_up"] = self.catch_up  # the Bus catches up on start
        return Settings.load(None, file_values=table, **overrides)


def load_config(path: str | Path) -> SidecarConfig:
    """Read and check the TOML file at ``path``.

    :raises ConfigError: unreadable file, invalid TOML, or a bad key (named).
    """
    try:
        with Path(path).open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the sidecar configuration: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return parse_config(document)


def parse_config(mapping: Mapping[str, Any]) -> SidecarConfig:
    """Check a parsed TOML document and build the configuration.

    :raises ConfigError: naming the first bad key and what is wrong with it.
    """
    document = _table(mapping, "the document")
    _known(document, _TOP_KEYS, "")
    factbus = _table(document.get("factbus", {}), "factbus")
    known_settings = tuple(f.name for f in fields(Settings))
    _known(factbus, known_settings, "factbus.")
    if "jinaga" in document:
        _table(document["jinaga"], "jinaga")
    sidecar = _table(document.get("sidecar", {}), "sidecar")
    _known(sidecar, _SIDECAR_KEYS, "sidecar.")

    listen = _string(sidecar.get("listen", "127.0.0.1:8081"), "sidecar.listen")
    match = _LISTEN.match(listen)
    if match is None:
        raise ConfigError(f"sidecar.listen: {listen!r} is not host:port (e.g. 127.0.0.1:8081)")
    if not 0 < int(match.group(2)) < 65536:
        raise ConfigError(
            f"sidecar.listen: port {match.group(2)} is not from 1 to 65535 "
            f"(any free port, 0, only with --listen)"
        )
    jinaga = _optional_string(sidecar.get("jinaga"), "sidecar.jinaga")
    if jinaga is not None and (not jinaga.startswith("/") or jinaga == "/"):
        raise ConfigError(f"sidecar.jinaga: {jinaga!r} must be a path prefix such as /jinaga")
    outbox = _optional_string(sidecar.get("outbox"), "sidecar.outbox")
    if outbox is not None:
        _identifier(outbox, "sidecar.outbox", own_prefix_ok=True)
    catch_up = sidecar.get("catch_up", [])
    if not isinstance(catch_up, list):
        raise ConfigError("sidecar.catch_up: must be a list of peer URLs")
    for i, peer in enumerate(catch_up):
        text = _string(peer, f"sidecar.catch_up[{i}]")
        if not text.startswith(("http://", "https://")):
            raise ConfigError(f"sidecar.catch_up[{i}]: {text!r} is not an http(s):// URL")

    tables = tuple(
        _table_spec(item, f"sidecar.table[{i}]")
        for i, item in enumerate(_list_of_tables(sidecar.get("table", []), "sidecar.table"))
    )
    names = [t.name for t in tables]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"sidecar.table[{i}].name: table {name!r} is declared twice")
        if outbox is not None and name == outbox:
            raise ConfigError(f"sidecar.table[{i}].name: {name!r} is also the outbox table")
    by_name = {t.name: t for t in tables}
    properties = tuple(
        _property_spec(item, f"sidecar.property[{i}]", by_name)
        for i, item in enumerate(_list_of_tables(sidecar.get("property", []), "sidecar.property"))
    )
    taken: dict[str, set[str]] = {t.name: {"hash", *(c.name for c in t.columns)} for t in tables}
    for i, prop in enumerate(properties):
        used = taken[prop.table]
        for column in (prop.column, prop.candidates_column):
            if column in used:
                raise ConfigError(
                    f"sidecar.property[{i}].column: {column!r} is already a column of "
                    f"table {prop.table!r}"
                )
            used.add(column)
    return SidecarConfig(
        factbus=dict(factbus),
        listen=listen,
        jinaga=jinaga,
        outbox=outbox,
        catch_up=tuple(catch_up),
        tables=tables,
        properties=properties,
        raw=dict(document),
    )


def _table_spec(item: dict[str, Any], key: str) -> TableSpec:
    _known(item, _TABLE_KEYS, f"{key}.")
    name = _identifier(_required_string(item, "name", key), f"{key}.name")
    fact = _fact_type(_required_string(item, "fact", key), f"{key}.fact")
    columns_given = _table(item.get("columns", {}), f"{key}.columns")
    columns: list[ColumnSpec] = []
    for column, source in columns_given.items():
        where = f"{key}.columns.{column}"
        _identifier(column, where)
        if column in RESERVED_COLUMNS or column.endswith("_candidates"):
            raise ConfigError(f"{where}: {column!r} is reserved (the key column, or *_candidates)")
        columns.append(ColumnSpec(column, _source(source, where)))
    unless_given = item.get("unless", [])
    if not isinstance(unless_given, list):
        raise ConfigError(f'{key}.unless: must be a list of "Type.role" strings or tables')
    unless = tuple(
        _unless(u, f"{key}.unless[{i}]", nested=True) for i, u in enumerate(unless_given)
    )
    return TableSpec(name, fact, tuple(columns), unless)


def _unless(value: Any, key: str, *, nested: bool) -> UnlessSpec:
    if isinstance(value, str):
        fact, dot, role = value.rpartition(".")
        if not dot or not fact or not role:
            raise ConfigError(
                f'{key}: {value!r} must be "<successor type>.<role>" '
                '(e.g. "Shop.Order.Cancelled.order")'
            )
        return UnlessSpec(_fact_type(fact, key), role)
    if isinstance(value, dict) and nested:
        _known(value, _UNLESS_KEYS, f"{key}.")
        fact = _fact_type(_required_string(value, "fact", key), f"{key}.fact")
        role = _required_string(value, "role", key)
        inner = value.get("unless", [])
        if not isinstance(inner, list):
            raise ConfigError(f'{key}.unless: must be a list of "Type.role" strings')
        return UnlessSpec(
            fact,
            role,
            tuple(_unless(u, f"{key}.unless[{i}]", nested=False) for i, u in enumerate(inner)),
        )
    if nested:
        raise ConfigError(f'{key}: must be a "Type.role" string or a table {{fact, role, unless}}')
    raise ConfigError(f'{key}: must be a "Type.role" string (unless nests one level only)')


def _property_spec(item: dict[str, Any], key: str, tables: dict[str, TableSpec]) -> PropertySpec:
    _known(item, _PROPERTY_KEYS, f"{key}.")
    table = _required_string(item, "table", key)
    if table not in tables:
        raise ConfigError(f"{key}.table: no [[sidecar.table]] is named {table!r}")
    column = _identifier(_required_string(item, "column", key), f"{key}.column")
    if column in RESERVED_COLUMNS:
        raise ConfigError(f"{key}.column: {column!r} is reserved (the key column)")
    fact = _fact_type(_required_string(item, "fact", key), f"{key}.fact")
    entity = _required_string(item, "entity", key)
    value = ColumnSpec(column, _source(item.get("value", "fields.value"), f"{key}.value"))
    prior = _string(item.get("prior", "prior"), f"{key}.prior")
    if not prior or prior == entity:
        raise ConfigError(f"{key}.prior: must name a role other than entity ({entity!r})")
    return PropertySpec(table, column, fact, entity, value, prior)


def _source(value: Any, key: str) -> str:
    text = _string(value, key)
    head, dot, rest = text.partition(".")
    if head not in ("fields", "predecessors") or not dot or not rest:
        raise ConfigError(
            f'{key}: {text!r} must be "fields.<dotted.path>" or "predecessors.<role>"'
        )
    if head == "fields" and any(not part for part in rest.split(".")):
        raise ConfigError(f"{key}: {text!r} has an empty path segment")
    return text


def _known(table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{prefix}{name}: unknown key (known here: {', '.join(allowed)})")


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table, not {type(value).__name__}")
    return dict(value)


def _list_of_tables(value: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be an array of tables ([[{key}]])")
    return [_table(item, f"{key}[{i}]") for i, item in enumerate(value)]


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, not {type(value).__name__}")
    return value


def _optional_string(value: Any, key: str) -> str | None:
    return None if value is None else _string(value, key)


def _required_string(table: Mapping[str, Any], name: str, key: str) -> str:
    if name not in table:
        raise ConfigError(f"{key}.{name}: missing (required)")
    text = _string(table[name], f"{key}.{name}")
    if not text:
        raise ConfigError(f"{key}.{name}: must not be empty")
    return text


def _identifier(name: str, key: str, *, own_prefix_ok: bool = False) -> str:
    if not IDENTIFIER.match(name) or len(name) > MAX_IDENTIFIER:
        raise ConfigError(
            f"{key}: {name!r} is not a valid name (lower-case letters, digits and _, "
            f"starting with a letter or _, at most {MAX_IDENTIFIER})"
        )
    if name.startswith("factbus") and not own_prefix_ok:
        raise ConfigError(f"{key}: {name!r}: names starting with factbus are factbus's own")
    return name


def _fact_type(text: str, key: str) -> str:
    if not text or text != text.strip():
        raise ConfigError(f"{key}: {text!r} is not a fact type")
    return text
