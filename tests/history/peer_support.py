"""A peer sidecar for the catch-up tests and benchmark: the real `factbus sidecar`
command in a subprocess (what users run), on a free port, and a reader of its
export (``GET /facts``) with the standard library."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson

from factbus.fact import FactRef


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


@contextlib.contextmanager
def peer_sidecar(transport: str, store: Path, topic: str, node: str, log: Path) -> Iterator[str]:
    """Run ``factbus sidecar`` (no views: the archive and the export) until the block
    ends; yield its base URL once it answers ``/readyz`` with 200."""
    port = free_port()
    config = store.with_suffix(".toml")
    config.write_text(
        "[factbus]\n"
        f'transport = "{transport}"\nstore = "sqlite:///{store}"\n'
        f'topic = "{topic}"\nnode = "{node}"\n\n'
        f'[sidecar]\nlisten = "127.0.0.1:{port}"\n'
    )
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "factbus", "sidecar", "--config", str(config)],
            stdout=err,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"peer sidecar exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if get(f"{url}/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("peer sidecar not ready within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def exported(url: str) -> list[FactRef]:
    """Every fact the peer exports, in export order."""
    refs: list[FactRef] = []
    after = "0"
    while True:
        status, body = get(f"{url}/facts?after={after}&limit=5000")
        assert status == 200, body[:300]
        page = orjson.loads(body)
        if not page["facts"]:
            return refs
        refs.extend(FactRef(f["type"], f["hash"]) for f in page["facts"])
        after = page["next"]


def wait_exported(url: str, count: int, timeout: float) -> list[FactRef]:
    """Poll the export until it holds ``count`` facts."""
    deadline = time.monotonic() + timeout
    while True:
        refs = exported(url)
        if len(refs) >= count or time.monotonic() > deadline:
            return refs
        time.sleep(0.5)
