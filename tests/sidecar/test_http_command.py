"""`factbus sidecar --config F` as a subprocess, probed over HTTP, stopped by SIGTERM;
then `factbus sidecar rebuild --config F TABLE` on the same database."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import tomllib
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from http_support import wire

from factbus import Fact
from factbus.testing.brokers import broker_url, unique, with_options
from factbus.testing.commands import run_factbus, start_sidecar
from factbus.testing.polling import eventually

TOML = """
[factbus]
transport = "memory://{run}"
store = "sqlite:///{toml_store}"
topic = "shop-{run}"
node = "node-{run}"

[sidecar]
listen = "127.0.0.1:8081"
outbox = "outbox"

[[sidecar.table]]
name = "customers"
fact = "Shop.Customer"
columns = {{ email = "fields.email" }}
"""


async def test_sidecar_command_serves_until_sigterm(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    config = tmp_path / "sidecar.toml"
    config.write_text(TOML.format(run=run, toml_store=tmp_path / "not-this.db"))
    assert tomllib.loads(config.read_text())["sidecar"]["outbox"] == "outbox"
    app_db = tmp_path / "app.db"
    env = {**os.environ, "FACTBUS_STORE": f"sqlite:///{app_db}"}  # overrides the TOML
    process, url = await start_sidecar("--config", str(config), env=env)
    try:
        customer = Fact("Shop.Customer", {"email": "ada@example.com"})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, what="/readyz")
            response = await client.post("/facts", json={"facts": [wire(customer)]})
            assert response.status_code == 201
            with sqlite3.connect(app_db) as db:  # the app's outbox, in its own transaction
                db.execute(
                    "INSERT INTO outbox (fact) VALUES (?)",
                    ('{"type": "Shop.Customer", "fields": {"email": "bob@example.com"}}',),
                )

            async def both() -> bool:
                rows = (await client.get("/tables/customers")).json()["rows"]
                return sorted(r["email"] for r in rows) == ["ada@example.com", "bob@example.com"]

            await eventually(both, what="both customers' rows")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest, errors = await process.communicate()
        assert process.returncode == 0, errors.decode()
        assert b"factbus sidecar: stopped" in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not (tmp_path / "not-this.db").exists()
    status, out, errors = await run_factbus(
        "sidecar", "rebuild", "--config", str(config), "customers", env=env
    )
    assert status == 0, errors
    assert "customers (2 rows)" in out
    with sqlite3.connect(app_db) as db:
        emails = sorted(e for (e,) in db.execute("SELECT email FROM customers"))
    assert emails == ["ada@example.com", "bob@example.com"]


async def test_sidecar_command_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text('[sidecar]\nlisten = "127.0.0.1:8081"\ntabel = []\n')
    status, _, errors = await run_factbus("sidecar", "--config", str(config))
    assert status == 2
    assert "sidecar.tabel: unknown key" in errors


async def test_sidecar_command_names_a_listen_address_it_cannot_take(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    config = tmp_path / "sidecar.toml"
    config.write_text(TOML.format(run=run, toml_store=tmp_path / "app.db"))
    taken, url = await start_sidecar("--config", str(config))
    try:
        port = url.rsplit(":", 1)[1]
        other = tmp_path / "other.toml"
        other.write_text(TOML.format(run=run + "b", toml_store=tmp_path / "other.db"))
        status, _, errors = await run_factbus(
            "sidecar", "--config", str(other), "--listen", f"127.0.0.1:{port}"
        )
        assert status == 1, errors
        assert errors.startswith(f"factbus sidecar: the sidecar cannot listen on 127.0.0.1:{port}")
        assert "Traceback" not in errors
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200  # the first one is unharmed
    finally:
        taken.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await taken.communicate()


@pytest.mark.broker("postgres")
async def test_sidecar_command_names_a_search_path_with_no_schema(tmp_path: Path) -> None:
    base = broker_url("postgres")
    missing, bookkeeping = unique("fbsc_nosuch", "_"), unique("fbsc_keep", "_")
    config = tmp_path / "sidecar.toml"
    config.write_text(TOML.format(run=uuid.uuid4().hex[:8], toml_store=tmp_path / "unused.db"))
    store = with_options(base, search_path=missing, schema=bookkeeping)
    try:
        status, _, errors = await run_factbus(
            "sidecar", "--config", str(config), env={**os.environ, "FACTBUS_STORE": store}
        )
        assert status == 2, errors
        assert f"the first schema of the search_path ({missing})" in errors, errors
        assert "Traceback" not in errors
    finally:
        conn = await asyncpg.connect(base)
        try:
            assert (
                await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", missing)
                == 0
            )
            await conn.execute(f'DROP SCHEMA IF EXISTS "{bookkeeping}" CASCADE')
        finally:
            await conn.close()


async def test_sidecar_command_names_a_store_without_sql(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(TOML.format(run=uuid.uuid4().hex[:8], toml_store=tmp_path / "unused.db"))
    env = {**os.environ, "FACTBUS_STORE": "memory://"}
    status, _, errors = await run_factbus("sidecar", "--config", str(config), env=env)
    assert status == 2, errors
    assert errors.strip().endswith("views need a sqlite:/// or postgresql:// store, not memory://")
