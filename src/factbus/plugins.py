"""Entry points: how a URL scheme finds the transport, store or bench baseline
registered for it, so that a third-party package adds one without touching
the core.

Groups: ``factbus.transports``, ``factbus.stores``, ``factbus.baselines`` and
``factbus.removals`` (a broker's deletion by name, for the test sweep), each
entry named by URL scheme (``kombu+redis://`` looks up ``kombu``) and
pointing at ``module:attribute``. A group's built-in table is used when
factbus runs from a source tree whose entry points are not installed; an
installed entry point wins over it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from factbus.errors import ConfigError, MissingDriver

Builtins = Mapping[str, tuple[str, str | None]]
"""scheme -> (``module:attribute``, extra to install for its driver or ``None``)."""


def registered(group: str, builtins: Builtins) -> list[str]:
    """Every scheme with an entry in ``group`` (installed or built in), sorted."""
    return sorted({ep.name for ep in entry_points(group=group)} | set(builtins))


def load(group: str, scheme: str, builtins: Builtins, *, what: str) -> Any:
    """The object registered as ``scheme`` in ``group``.

    :raises ConfigError: nothing is registered for ``scheme`` (lists what is).
    :raises MissingDriver: its module cannot be imported (names the extra to install).
    """
    found = [ep for ep in entry_points(group=group) if ep.name == scheme]
    target, extra = builtins.get(scheme, (None, None))
    if found:
        target = found[0].value
    if target is None:
        known = ", ".join(f"{name}://" for name in registered(group, builtins))
        raise ConfigError(f"no {what} for {scheme}:// (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except MissingDriver:
        raise  # the adapter already named its extra
    except ImportError as exc:
        raise MissingDriver(scheme, extra or scheme, exc) from exc
    return getattr(module, attr)
