"""Options of a ``postgresql://`` store URL, parsed without the driver.

The PostgreSQL store (``factbus_postgres``) and the parts of the core that keep
tables of their own in the store's database (sidecar views and outbox, the
Jinaga bridge's bookmarks) read the same URL the same way, here: the core
never imports an adapter. The options are listed in :mod:`factbus_postgres.store`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from factbus.errors import ConfigError
from factbus.store import sql_dialect
from factbus.urls import parse_bool, parse_duration, parse_int, redact

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")
_OPTIONS = (
    "schema",
    "prefix",
    "pool_min",
    "pool_max",
    "connect_timeout",
    "command_timeout",
    "fact_cache",
    "custom_plans",
)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Options of a ``postgresql://`` store URL (listed in :mod:`factbus_postgres.store`)."""

    dsn: str = field(repr=False)
    """The URL asyncpg connects with: the given URL less factbus's own options."""
    schema: str
    prefix: str
    pool_min: int
    pool_max: int
    connect_timeout: float
    command_timeout: float
    fact_cache: int
    custom_plans: bool

    @classmethod
    def from_url(cls, url: str) -> PostgresConfig:
        """Parse ``url``.

        :raises ConfigError: wrong scheme, bad identifier or number.
        """
        parts = urlsplit(url)
        if sql_dialect(url) != "postgresql":
            raise ConfigError(f"PostgresStore needs a postgresql:// URL, not {parts.scheme}://")
        ours: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OPTIONS:
                ours[key] = value
            else:
                rest.append((key, value))
        dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
        schema = ours.get("schema", "public")
        prefix = ours.get("prefix", "factbus_")
        for name, value in (("schema", schema), ("prefix", prefix)):
            if not _IDENTIFIER.match(value) or len(value) > 40:
                raise ConfigError(
                    f"{name}={value!r}: use lower-case letters, digits and _ (at most 40)"
                )
        what = "postgresql store option"
        config = cls(
            dsn=dsn,
            schema=schema,
            prefix=prefix,
            pool_min=parse_int("pool_min", ours.get("pool_min", "1"), what=what),
            pool_max=parse_int("pool_max", ours.get("pool_max", "4"), what=what),
            connect_timeout=parse_duration(
                "connect_timeout", ours.get("connect_timeout", "10"), what=what
            ),
            command_timeout=parse_duration(
                "command_timeout", ours.get("command_timeout", "60"), what=what
            ),
            fact_cache=parse_int("fact_cache", ours.get("fact_cache", "20000"), what=what),
            custom_plans=parse_bool("custom_plans", ours.get("custom_plans", "true"), what=what),
        )
        if not 0 <= config.pool_min <= config.pool_max or config.pool_max < 1:
            raise ConfigError(f"{redact(url)}: need 0 <= pool_min <= pool_max and pool_max >= 1")
        return config
