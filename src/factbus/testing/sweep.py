"""Remove from the test brokers what factbus's tests made there, found by name.

:func:`sweep` lists the objects of each broker it is given and removes those a
selector picks: :func:`containing` (objects whose name contains a name a test
made, from :mod:`factbus.testing.names`: what the suite's fixtures use after
each test and at the end of a run) or :func:`prefixed` (objects whose name, or
a dotted or ``:``-separated part of it, starts with a given prefix: for
leftovers of runs without a journal). Nothing else is touched: other runs on the
same brokers use other random names.

What is listed and removed, per broker kind (the keys of
:data:`factbus.testing.brokers.DEFAULT_URLS`):

- ``amqp``, ``kombu_amqp`` (RabbitMQ): queues and exchanges of the URL's vhost,
  through the management HTTP API (``http://<host>:15672``, or
  ``FACTBUS_TEST_RABBITMQ_API``; AMQP cannot list queues);
- ``kafka``: topics and consumer groups, deleted by the adapter's
  ``removal.delete`` (found through the entry-point group :data:`REMOVALS`; a
  group that still has members is reported as busy, to be retried later, not
  as a failure);
- ``redis``: keys (kombu's queues, bindings and unacked sets);
- ``postgres``: schemas (dropped with what they hold) and databases.

``python -m factbus.testing.sweep`` (``make brokers-clean``) removes what the
journals of finished runs name, or, given ``--prefix``, what those prefixes
name, on the brokers of ``FACTBUS_TEST_*_URL`` (else the local defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote, urlsplit

from factbus import plugins
from factbus.testing.names import Entries, finished_journals

Select = Callable[[str], bool]
"""Whether an object's name is one to remove."""

API_ENV: Final = "FACTBUS_TEST_RABBITMQ_API"
"""The RabbitMQ management API's base URL, if not ``http://<AMQP host>:15672``."""

RABBITMQ_KINDS: Final = frozenset({"amqp", "kombu_amqp"})
KINDS: Final = frozenset({*RABBITMQ_KINDS, "kafka", "redis", "postgres"})

REMOVALS: Final = "factbus.removals"
"""The entry-point group of each broker's deletion by name, named by URL scheme
(``kafka``: ``factbus_kafka.removal:delete``, called with an AdminClient, the
topics, the groups, a timeout and how long to retry a group with members; it
returns what it ``removed``, ``failed`` and found ``busy``, a line each)."""

_BUILTIN_REMOVALS: Final[plugins.Builtins] = {"kafka": ("factbus_kafka.removal:delete", "kafka")}

T = TypeVar("T")


class SweepError(Exception):
    """What a sweep could not remove (or could not list), one line per object."""


@dataclass
class Swept:
    """What a sweep did: objects removed, failures (each naming the object and the
    error), and Kafka groups left because they still had members."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)

    def update(self, other: Swept) -> None:
        """Add ``other``'s lines to these."""
        self.removed += other.removed
        self.failed += other.failed
        self.busy += other.busy

    def check(self, *, busy_is_failure: bool) -> None:
        """Raise :class:`SweepError` listing the failures (and busy groups if
        ``busy_is_failure``); return if there are none."""
        problems = [*self.failed, *(self.busy if busy_is_failure else [])]
        if problems:
            raise SweepError(
                f"{len(problems)} broker object(s) made by the tests could not be removed "
                "(`make brokers-clean` retries once the run is over):\n  " + "\n  ".join(problems)
            )


def containing(names: Collection[str]) -> Select:
    """Objects whose name contains one of ``names`` (case-insensitively: PostgreSQL
    folds unquoted names to lower case)."""
    wanted = sorted({name.lower() for name in names if name})

    def select(object_name: str) -> bool:
        lowered = object_name.lower()
        return any(name in lowered for name in wanted)

    return select


def prefixed(prefixes: Collection[str]) -> Select:
    """Objects whose name, or a part of it after a ``.`` or a ``:`` (kombu's
    ``_kombu.binding.<topic>``, a key prefix ``<prefix>:``), starts with one of
    ``prefixes``."""
    wanted = tuple(prefix for prefix in prefixes if prefix)

    def select(object_name: str) -> bool:
        if not wanted:
            return False
        parts = object_name.replace(":", ".").split(".")
        return any(".".join(parts[i:]).startswith(wanted) for i in range(len(parts)))

    return select


async def sweep(brokers: Mapping[str, Collection[str]], select: Select) -> Swept:
    """Remove, on each broker of ``brokers`` (kind -> URLs), every object ``select``
    picks; brokers are swept concurrently, each RabbitMQ vhost, Kafka cluster,
    Redis database or PostgreSQL database once. Never raises for a broker's
    error: it is a line of :attr:`Swept.failed`."""
    jobs: dict[tuple[str, str], Coroutine[Any, Any, Swept]] = {}
    for kind, urls in brokers.items():
        for url in urls:
            if kind in RABBITMQ_KINDS:
                api, vhost, auth = _rabbitmq_api(url)
                key = ("rabbitmq", f"{api}|{vhost}")
                if key not in jobs:
                    jobs[key] = _guarded("rabbitmq", _sweep_rabbitmq(api, vhost, auth, select))
            elif kind == "kafka":
                key = ("kafka", _kafka_bootstrap(url))
                if key not in jobs:
                    jobs[key] = _guarded("kafka", _sweep_kafka(key[1], select))
            elif kind == "redis":
                key = ("redis", _redis_url(url))
                if key not in jobs:
                    jobs[key] = _guarded("redis", _sweep_redis(key[1], select))
            elif kind == "postgres":
                key = ("postgres", url.split("?", 1)[0])
                if key not in jobs:
                    jobs[key] = _guarded("postgres", _sweep_postgres(key[1], select))
    swept = Swept()
    for result in await asyncio.gather(*jobs.values()):
        swept.update(result)
    return swept


def sweep_now(brokers: Mapping[str, Collection[str]], select: Select) -> Swept:
    """:func:`sweep` from synchronous code, on an event loop of its own in another
    thread (so it runs whether or not this thread has a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="factbus-sweep") as pool:
        return pool.submit(asyncio.run, sweep(brokers, select)).result()


def present(brokers: Mapping[str, Collection[str]], select: Select) -> list[str]:
    """The names of the objects ``select`` picks on ``brokers`` (listed, not removed;
    sorted; a broker that cannot be listed raises :class:`SweepError`)."""
    seen: list[str] = []

    def note(name: str) -> bool:
        if select(name):
            seen.append(name)
        return False

    sweep_now(brokers, note).check(busy_is_failure=True)
    return sorted(seen)


async def _guarded(broker: str, job: Coroutine[Any, Any, Swept]) -> Swept:
    try:
        return await job
    except Exception as error:  # the broker could not be listed at all
        return Swept(failed=[f"{broker}: {type(error).__name__}: {error}"])


# -- RabbitMQ: the management HTTP API -------------------------------------------------


def _rabbitmq_api(url: str) -> tuple[str, str, str]:
    """(API base URL, vhost, Basic credentials) for an ``amqp[s]://`` or
    ``kombu+amqp://`` URL (its first host if it lists several)."""
    parts = urlsplit(url.split(",")[0].split("?", 1)[0])
    host = parts.hostname or "127.0.0.1"
    api = os.environ.get(API_ENV) or f"http://{host}:15672"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) or "/"
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return api.rstrip("/"), vhost, auth


def _http(method: str, url: str, auth: str) -> bytes:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as error:
        if method == "DELETE" and error.code == 404:  # already gone
            return b""
        raise


async def _sweep_rabbitmq(api: str, vhost: str, auth: str, select: Select) -> Swept:
    swept = Swept()
    where = quote(vhost, safe="")
    for what in ("queues", "exchanges"):
        try:
            listing = await asyncio.to_thread(
                _http, "GET", f"{api}/api/{what}/{where}?columns=name", auth
            )
        except (urllib.error.URLError, OSError) as error:
            swept.failed.append(
                f"rabbitmq: the management API at {api} did not list {what} ({error}); "
                f"enable rabbitmq_management or set {API_ENV}"
            )
            continue
        names = [entry["name"] for entry in json.loads(listing)]
        for name in names:
            if not name or name.startswith("amq.") or not select(name):
                continue
            target = f"{api}/api/{what}/{where}/{quote(name, safe='')}"
            try:
                await asyncio.to_thread(_http, "DELETE", target, auth)
                swept.removed.append(f"rabbitmq {what[:-1]} {name!r}")
            except (urllib.error.URLError, OSError) as error:
                swept.failed.append(f"rabbitmq {what[:-1]} {name!r}: {error}")
    return swept


# -- Kafka: the admin client -----------------------------------------------------------


_admins: dict[str, Any] = {}
"""Kafka admin clients by bootstrap servers (thread-safe; kept for the process)."""


def _kafka_bootstrap(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0]


async def _sweep_kafka(bootstrap: str, select: Select) -> Swept:
    from confluent_kafka.admin import AdminClient

    swept = Swept()
    admin = _admins.get(bootstrap)
    if admin is None:  # made once per cluster: a new client costs ~60 ms, a listing ~2 ms
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        _admins[bootstrap] = admin
    metadata = await asyncio.to_thread(admin.list_topics, timeout=30)
    topics = [t for t in metadata.topics if not t.startswith("__") and select(t)]
    listed = await asyncio.wrap_future(admin.list_consumer_groups(request_timeout=30))
    groups = [g.group_id for g in listed.valid if select(g.group_id)]

    if topics or groups:
        # The adapter's own deletion, reached like a transport, through its entry
        # point (the core never imports an adapter: tests/unit/test_layers.py); a
        # group still with members is reported busy at once, for the run-end
        # sweep to retry.
        delete = plugins.load(REMOVALS, "kafka", _BUILTIN_REMOVALS, what="removal")
        done = await asyncio.to_thread(delete, admin, topics, groups, 30.0, 0.0)
        swept.removed += done.removed
        swept.failed += done.failed
        swept.busy += done.busy
    return swept


# -- Redis: SCAN and DEL ---------------------------------------------------------------


def _redis_url(url: str) -> str:
    """``redis://host:port/db`` for a ``kombu+redis://`` (or ``redis://``) URL."""
    return "redis://" + url.split("://", 1)[1].split("?", 1)[0]


async def _sweep_redis(url: str, select: Select) -> Swept:
    import redis.asyncio as aioredis

    swept = Swept()
    client = aioredis.from_url(url)
    async with client:
        # A key is bytes: one that is not UTF-8 (anyone's, on a shared Redis) must
        # not stop the sweep; it is read with its odd bytes replaced.
        keys = [
            key
            async for key in client.scan_iter(count=1000)
            if select(key.decode(errors="replace"))
        ]
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            await client.delete(*chunk)
            swept.removed += [f"redis key {key.decode(errors='replace')!r}" for key in chunk]
    return swept


# -- PostgreSQL: schemas and databases -------------------------------------------------


async def _sweep_postgres(url: str, select: Select) -> Swept:
    import asyncpg

    swept = Swept()
    connection = await asyncpg.connect(url)
    try:
        schemas = [
            row["nspname"]
            for row in await connection.fetch("SELECT nspname FROM pg_namespace")
            if select(row["nspname"])
        ]
        current = await connection.fetchval("SELECT current_database()")
        databases = [
            row["datname"]
            for row in await connection.fetch(
                "SELECT datname FROM pg_database WHERE NOT datistemplate"
            )
            if row["datname"] != current and select(row["datname"])
        ]
        for what, names, drop in (
            ("schema", schemas, "DROP SCHEMA IF EXISTS {} CASCADE"),
            ("database", databases, "DROP DATABASE IF EXISTS {} WITH (FORCE)"),
        ):
            for name in names:
                try:
                    await connection.execute(drop.format(_ident(name)))
                    swept.removed.append(f"postgres {what} {name!r}")
                except Exception as error:
                    swept.failed.append(f"postgres {what} {name!r}: {error}")
    finally:
        await connection.close()
    return swept


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- the command: journals of finished runs, or prefixes -------------------------------


def configured_brokers(kinds: Collection[str] = KINDS) -> dict[str, set[str]]:
    """The URLs of the test brokers named by ``kinds`` (``FACTBUS_TEST_*_URL``, else
    the local defaults), without checking that they answer."""
    from factbus.testing.brokers import DEFAULT_URLS

    return {
        kind: {os.environ.get(f"FACTBUS_TEST_{kind.upper()}_URL", DEFAULT_URLS[kind])}
        for kind in kinds
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m factbus.testing.sweep``: see ``--help``. Exit 0 when everything
    selected is gone, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m factbus.testing.sweep",
        description="Remove what factbus's tests left on the test brokers. Without "
        "--prefix: what the journals of finished test runs name (a run still going "
        "on is never touched). With --prefix: every queue, exchange, topic, group, "
        "key, schema or database whose name (or a '.'/':' part of it) starts with a "
        "prefix; only safe when no test run using those prefixes is going on.",
    )
    parser.add_argument("--prefix", action="append", default=[], help="a name prefix (repeat)")
    parser.add_argument(
        "--broker",
        action="append",
        choices=sorted(KINDS),
        help="only these brokers (repeat; default: all of FACTBUS_TEST_*_URL)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    args = parser.parse_args(argv)
    kinds = set(args.broker or KINDS)
    brokers = configured_brokers(kinds)
    swept = Swept()
    if args.prefix:
        if args.dry_run:
            for name in present(brokers, prefixed(args.prefix)):
                print(f"would remove {name!r}")
            return 0
        swept = sweep_now(brokers, prefixed(args.prefix))
    else:
        for journal in finished_journals():
            entries = journal.read()
            targets = Entries(brokers={k: u for k, u in entries.brokers.items() if k in kinds})
            targets.update(Entries(brokers=brokers))
            if args.dry_run:
                for name in present(targets.brokers, containing(entries.names)):
                    print(f"{journal.path}: would remove {name!r}")
                continue
            done = sweep_now(targets.brokers, containing(entries.names))
            swept.update(done)
            print(f"{journal.path}: {len(entries.names)} names, {len(done.removed)} removed")
            if not done.failed and not done.busy:
                journal.path.unlink(missing_ok=True)
    for line in swept.removed:
        print(f"removed {line}")
    for line in [*swept.failed, *swept.busy]:
        print(f"NOT removed: {line}", file=sys.stderr)
    print(f"{len(swept.removed)} removed, {len(swept.failed) + len(swept.busy)} not removed")
    return 1 if swept.failed or swept.busy else 0


if __name__ == "__main__":
    raise SystemExit(main())
