"""``factbus bench --sidecar``: both pipelines drain the same shop workload; the
sidecar run really projected it (its rows match a direct computation)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from factbus.bench.sidecar import _drain_once, shop_workload
from factbus.cli import main
from factbus.sidecar.views import Views


def test_cli_sidecar_reports_both_pipelines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sidecar.json"
    status = main(["bench", "--sidecar", "--facts", "400", "--repeat", "1", "--json", str(out)])
    assert status == 0
    (cell,) = json.loads(out.read_text())
    assert cell["store"] == "sqlite"
    assert cell["plain_median"] > 0 and cell["sidecar_median"] > 0
    assert cell["ratio"] == pytest.approx(cell["sidecar_median"] / cell["plain_median"])
    assert cell["plain_cpu_us_per_fact"][0] > 0 and cell["sidecar_cpu_us_per_fact"][0] > 0
    assert "sidecar views vs plain handler pipeline" in capsys.readouterr().out


async def test_the_sidecar_cell_projects_every_fact() -> None:
    facts = shop_workload(600, 3, 10)
    assert len(facts) == len({f.ref for f in facts}) == 600
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/s.db"
        rate, cpu = await _drain_once(url, facts, True, 64)
        assert rate > 0 and cpu > 0
        from factbus.bench.sidecar import shop_config

        views = Views(shop_config(), store_url=url)
        rows = await views.rows("customers", limit=10_000)
        assert {r["hash"] for r in rows} == {f.hash for f in facts if f.type == "Shop.Customer"}
        orders = await views.rows("orders", limit=10_000)
        cancelled = {
            f.predecessors["order"].hash  # type: ignore[union-attr]
            for f in facts
            if f.type == "Shop.Order.Cancelled"
        }
        revoked_orders = {
            c.predecessors["order"].hash  # type: ignore[union-attr]
            for c in facts
            if c.type == "Shop.Order.Cancelled"
            and any(
                r.type == "Shop.Order.Cancelled.Revoked" and r.predecessors["cancelled"] == c.ref
                for r in facts
            )
        }
        visible = {
            f.hash
            for f in facts
            if f.type == "Shop.Order" and (f.hash not in cancelled or f.hash in revoked_orders)
        }
        assert {r["hash"] for r in orders} == visible
        assert all(r["status"] == r["status_candidates"][-1] for r in orders)
        await views.aclose()
