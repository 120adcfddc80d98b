"""examples/shop runs as its README says (the sidecar command and an app that only
speaks HTTP and SQL), and `factbus demo --sidecar` converges."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import httpx

from factbus.testing.commands import run_command, start_sidecar
from factbus.testing.polling import eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop"


async def _run(*argv: str, cwd: Path, env: dict[str, str]) -> str:
    status, out, err = await run_command(argv, cwd=cwd, env=env)
    assert status == 0, (argv, err)
    return out.strip()


async def test_shop_example(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE / "sidecar.toml", tmp_path)
    shutil.copy(EXAMPLE / "app.py", tmp_path)
    sidecar, url = await start_sidecar("--config", "sidecar.toml", cwd=tmp_path)
    try:
        env = {**os.environ, "SIDECAR": url, "DATABASE": str(tmp_path / "shop.db")}
        async with httpx.AsyncClient(base_url=url) as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, what="/readyz")

        async def app(*args: str) -> str:
            return await _run(sys.executable, "app.py", *args, cwd=tmp_path, env=env)

        async def orders_show(text: str) -> bool:
            return text in await app("orders")

        customer = await app("customer", "ada@example.com")
        order = await app("order", customer, "7")
        paid = await app("status", order, "paid")
        await eventually(lambda: orders_show("#7  paid"), what="status paid")
        shipped = await app("status", order, "shipped", paid)
        refunded = await app("status", order, "refunded", paid)
        winner = "shipped" if shipped > refunded else "refunded"
        both = '["refunded","shipped"]' if refunded < shipped else '["shipped","refunded"]'
        await eventually(lambda: orders_show(f"#7  {winner:10} candidates={both}"), what="conflict")
        await app("status", order, "refunded")  # priors: the leaves, from the row endpoint
        await eventually(lambda: orders_show('candidates=["refunded"]'), what="merge")
        assert "queued in the outbox" in await app("cancel", order, "customer asked")

        async def gone() -> bool:
            return await app("orders") == ""

        await eventually(gone, what="the cancelled order to leave the view")
    finally:
        sidecar.send_signal(signal.SIGTERM)
        await sidecar.communicate()
    assert sidecar.returncode == 0


async def test_demo_sidecar_converges() -> None:
    out = await _run(
        sys.executable, "-m", "factbus", "demo", "--sidecar", cwd=Path.cwd(), env=dict(os.environ)
    )
    assert "converged" in out
    assert "NOT converged" not in out
