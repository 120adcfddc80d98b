"""The shop example's sidecar views, defined once for the demo, the benchmark and
the tests.

Two sets of views over the same fact types (``Shop.Customer``, ``Shop.Order``,
``Shop.Order.Status``, ``Shop.Order.Cancelled``, ...):

- :func:`shop_document`: README's ``sidecar.toml`` (an ``orders`` table whose
  rows leave once cancelled, with a convergent ``status`` property); with
  ``customers=True`` and ``outbox="outbox"`` it is ``examples/shop/sidecar.toml``;
- :func:`shop_views`: a ``[sidecar]`` table set that exercises every view
  feature: a cancellation that can itself be revoked, a second table over the
  same fact type (``open_orders``, left once shipped), and the status property.

Every call returns fresh plain dicts, shaped as a parsed TOML file (what
:func:`factbus.sidecar.config.parse_config` takes); the caller may change them.
"""

from __future__ import annotations

from typing import Any


def status_property() -> dict[str, str]:
    """The ``[[sidecar.property]]`` ``orders.status``: the value of an order's
    latest ``Shop.Order.Status`` facts (each names the edits it replaces as
    ``prior``; concurrent ones are candidates)."""
    return {
        "table": "orders",
        "column": "status",
        "fact": "Shop.Order.Status",
        "entity": "order",
        "value": "fields.value",
        "prior": "prior",
    }


def shop_document(
    transport: str,
    store: str,
    topic: str,
    node: str,
    *,
    customers: bool = False,
    outbox: str | None = None,
) -> dict[str, Any]:
    """README's ``sidecar.toml``, listening on 127.0.0.1:8081: ``orders`` (number,
    customer; gone once a ``Shop.Order.Cancelled`` names the order) with
    :func:`status_property`. ``customers``: a ``customers`` table (email) first;
    ``outbox``: the outbox table's name."""
    tables: list[dict[str, Any]] = []
    if customers:
        tables.append(
            {"name": "customers", "fact": "Shop.Customer", "columns": {"email": "fields.email"}}
        )
    tables.append(
        {
            "name": "orders",
            "fact": "Shop.Order",
            "columns": {"number": "fields.number", "customer": "predecessors.customer"},
            "unless": ["Shop.Order.Cancelled.order"],
        }
    )
    sidecar: dict[str, Any] = {
        "listen": "127.0.0.1:8081",
        "table": tables,
        "property": [status_property()],
    }
    if outbox:
        sidecar["outbox"] = outbox
    return {
        "factbus": {"transport": transport, "store": store, "topic": topic, "node": node},
        "sidecar": sidecar,
    }


def shop_views(**order_columns: str) -> dict[str, Any]:
    """A ``[sidecar]`` table: ``orders`` (number, customer and ``order_columns``;
    gone while a ``Shop.Order.Cancelled`` names the order, back once a
    ``Shop.Order.Cancelled.Revoked`` names that cancellation), ``customers``
    (name), ``open_orders`` (number; gone once ``Shop.Order.Shipped``) and
    :func:`status_property`."""
    return {
        "table": [
            {
                "name": "orders",
                "fact": "Shop.Order",
                "columns": {
                    "number": "fields.number",
                    "customer": "predecessors.customer",
                    **order_columns,
                },
                "unless": [
                    {
                        "fact": "Shop.Order.Cancelled",
                        "role": "order",
                        "unless": ["Shop.Order.Cancelled.Revoked.cancelled"],
                    }
                ],
            },
            {"name": "customers", "fact": "Shop.Customer", "columns": {"name": "fields.name"}},
            {
                "name": "open_orders",
                "fact": "Shop.Order",
                "columns": {"number": "fields.number"},
                "unless": ["Shop.Order.Shipped.order"],
            },
        ],
        "property": [status_property()],
    }
