"""A tiny shop application that knows nothing of factbus: it speaks HTTP to the
sidecar and SQL to its database (the Python standard library only).

    python app.py customer ada@example.com          -> POST /facts, prints the hash
    python app.py order CUSTOMER_HASH 7             -> POST /facts
    python app.py status ORDER_HASH paid [PRIOR...] -> POST /facts; prior = the statuses it replaces
                                                       (default: every current one, from
                                                       GET /tables/orders/rows/ORDER_HASH)
    python app.py cancel ORDER_HASH "out of stock"  -> INSERT into the outbox + the app's own
                                                       audit table, in one SQL transaction
    python app.py orders                            -> SELECT from the orders view (SQL)
    python app.py table orders                      -> GET /tables/orders (HTTP)
    python app.py watch orders                      -> GET /tables/orders/changes (events)

Environment: SIDECAR (default http://127.0.0.1:8081), DATABASE (default shop.db).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SIDECAR = os.environ.get("SIDECAR", "http://127.0.0.1:8081")
DATABASE = os.environ.get("DATABASE", "shop.db")


def post_facts(*facts: dict[str, Any]) -> list[str]:
    request = urllib.request.Request(
        f"{SIDECAR}/facts",
        data=json.dumps({"facts": list(facts)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request) as response:
            hashes: list[str] = json.load(response)["hashes"]
            return hashes
    except urllib.error.HTTPError as error:
        sys.exit(f"refused ({error.code}): {json.load(error)['error']['message']}")


def row(table: str, key: str) -> dict[str, Any]:
    """One row and its properties' current leaves (their hashes name them as prior)."""
    url = f"{SIDECAR}/tables/{table}/rows/{urllib.parse.quote(key, safe='')}"
    with urllib.request.urlopen(url) as response:
        found: dict[str, Any] = json.load(response)
        return found


def ref(fact_type: str, fact_hash: str) -> dict[str, str]:
    return {"type": fact_type, "hash": fact_hash}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "customer":
        print(post_facts({"type": "Shop.Customer", "fields": {"email": args[0]}})[0])
    elif command == "order":
        order = {
            "type": "Shop.Order",
            "fields": {"number": int(args[1])},
            "predecessors": {"customer": ref("Shop.Customer", args[0])},
        }
        print(post_facts(order)[0])
    elif command == "status":
        priors = args[2:] or [leaf["hash"] for leaf in row("orders", args[0])["leaves"]["status"]]
        status = {
            "type": "Shop.Order.Status",
            "fields": {"value": args[1]},
            "predecessors": {
                "order": ref("Shop.Order", args[0]),
                "prior": [ref("Shop.Order.Status", h) for h in priors],
            },
        }
        print(post_facts(status)[0])
    elif command == "cancel":
        cancelled = {
            "type": "Shop.Order.Cancelled",
            "fields": {"reason": args[1]},
            "predecessors": {"order": ref("Shop.Order", args[0])},
        }
        with sqlite3.connect(DATABASE, timeout=30) as db:  # one transaction
            db.execute("CREATE TABLE IF NOT EXISTS audit (order_hash TEXT, what TEXT)")
            db.execute("INSERT INTO audit VALUES (?, 'cancelled')", (args[0],))
            db.execute("INSERT INTO outbox (fact) VALUES (?)", (json.dumps(cancelled),))
        print("queued in the outbox")
    elif command == "orders":
        with sqlite3.connect(DATABASE, timeout=30) as db:
            query = "SELECT number, status, status_candidates, hash FROM orders ORDER BY number"
            for number, status, candidates, order_hash in db.execute(query):
                print(f"#{number}  {status or '-':10} candidates={candidates}  {order_hash}")
    elif command == "table":
        with urllib.request.urlopen(f"{SIDECAR}/tables/{args[0]}") as response:
            print(json.dumps(json.load(response), indent=2))
    elif command == "watch":
        with urllib.request.urlopen(f"{SIDECAR}/tables/{args[0]}/changes") as response:
            for line in response:
                if line.startswith(b"data: "):
                    print(line[6:].decode().strip(), flush=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:] or ["help"])
