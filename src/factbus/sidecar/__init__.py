"""The sidecar: project facts into convergent tables in the app's database
(DESIGN.md §7) and serve them to the app container.

``factbus.sidecar.config`` reads the TOML file; ``archive`` keeps every handled
fact (with a causal ``seq``); ``views`` maintains the declared tables;
``rebuild`` replays the archive into fresh tables. The package's ``__all__``
lists the sidecar's public names (the configuration's, defined in ``config``).
"""

from __future__ import annotations

from factbus.sidecar.config import (
    ColumnSpec,
    PropertySpec,
    SidecarConfig,
    TableSpec,
    UnlessSpec,
    load_config,
    parse_config,
)

__all__ = [
    "ColumnSpec",
    "PropertySpec",
    "SidecarConfig",
    "TableSpec",
    "UnlessSpec",
    "load_config",
    "parse_config",
]
