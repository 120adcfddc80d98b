"""Settings: from code, ``FACTBUS_*`` environment variables, or a TOML file.

Precedence: explicit arguments, then environment, then the TOML file, then defaults.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from factbus.errors import ConfigError
from factbus.urls import coerce

ENV_PREFIX = "FACTBUS_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a :class:`~factbus.Bus` can be told. Each field ``name`` can be
    set with the environment variable ``FACTBUS_<NAME>``."""

    transport: str = "memory://"
    """Transport URL: ``memory://ns``, ``amqp://...``, ``kafka://host:9092``, ``kombu+redis://...``."""
    store: str = ""
    """Store URL; empty means ``sqlite:///.factbus/<node>.db`` (the embedded default)."""
    topic: str = "facts"
    node: str = ""
    """This node's stable name; empty means the host name. Fan-out mode subscribes
    with it as the group, so it must not change across restarts."""
    group: str = ""
    """Non-empty: group mode (workers share the work and must share a store)."""
    consume: bool = True
    """False for a publish-only bus."""
    batch_size: int = 512
    """Deliveries taken per pipeline step (one store transaction each)."""
    linger: float = 0.002
    """Seconds the consumer waits for more deliveries when a step would be small:
    fewer, larger store transactions for a little latency. 0 disables it."""
    max_envelope_bytes: int = 1024 * 1024
    pack: int = 1
    """Facts packed into one envelope per publish call, at most (and at most
    ``max_envelope_bytes``): brokers whose cost is per message (RabbitMQ, kombu)
    carry many facts per message and per confirm. 1: one envelope per fact. A
    receiver refuses an envelope as a whole, so one bad fact dead-letters every
    fact packed with it (see docs/decisions.md, "Packed envelopes")."""
    max_depth: int = 32
    retry_attempts: int = 3
    """Attempts per handler before the fact is dead-lettered."""
    retry_backoff: float = 0.05
    """Seconds before the second attempt; doubled each time, at most ``retry_backoff_max``."""
    retry_backoff_max: float = 2.0
    handler_timeout: float = 0.0
    """Seconds an async handler may take per attempt; 0 means no limit."""
    handled_cache: int = 65536
    """Handled identities kept in memory to spare store look-ups (bounded)."""
    log_level: str = "warning"
    catch_up: tuple[str, ...] = ()
    """Peers (``http://peer:8081``, their sidecar's export) to catch up from when the
    bus starts, before it consumes live (see :mod:`factbus.catchup`). The variable
    ``FACTBUS_CATCH_UP`` takes them comma-separated."""

    def __post_init__(self) -> None:
        given: object = self.catch_up  # TOML gives a list, FACTBUS_CATCH_UP a string
        if isinstance(given, str):
            given = [p.strip() for p in given.split(",") if p.strip()]
        if not isinstance(given, list | tuple) or not all(isinstance(p, str) and p for p in given):
            raise ConfigError("catch_up must be a list of peer URLs (http://peer:8081)")
        object.__setattr__(self, "catch_up", tuple(given))
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if self.pack < 1:
            raise ConfigError("pack must be at least 1")
        if self.retry_attempts < 1:
            raise ConfigError("retry_attempts must be at least 1")
        if not self.topic:
            raise ConfigError("topic must not be empty")

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///.factbus/{self.node_name}.db"

    @property
    def subscription_group(self) -> str:
        """The broker group this bus consumes with: the group, or the node (fan-out)."""
        return self.group or self.node_name

    @classmethod
    def load(
        cls,
        toml_path: str | os.PathLike[str] | None = None,
        *,
        file_values: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, then the file, then ``FACTBUS_*`` variables, then ``overrides``
        (``None`` values are ignored): arguments > environment > file.

        The file is ``file_values`` when given (a ``[factbus]`` table its caller
        already parsed, e.g. from a sidecar.toml), else ``toml_path`` or
        ``FACTBUS_CONFIG`` (section ``[factbus]`` or top level).
        """
        values: dict[str, Any] = {}
        path = toml_path or os.environ.get(ENV_PREFIX + "CONFIG")
        if file_values is not None:
            values.update(file_values)
        elif path:
            with Path(path).open("rb") as handle:
                data = tomllib.load(handle)
            values.update(data.get("factbus", data))
        names = {f.name: f for f in fields(cls)}
        for name, spec in names.items():
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = coerce(ENV_PREFIX + name.upper(), raw, spec.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(names)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(cls(), **values)
