"""The documentation's examples are literally right: the README's library snippet runs as
printed, and every TOML block of README.md and docs/*.md (plus the shipped sidecar
configurations) is accepted by the parser that reads such a file, keys and all.

A renamed or dropped TOML key, or an API change that breaks the README's first
example, fails here instead of on a new user's machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from factbus.jinaga.bridge import parse_bridge_config
from factbus.sidecar.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(language: str) -> list[tuple[str, str]]:
    """Every fenced ``language`` block of README.md and docs/*.md: (where, text)."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


TOML_BLOCKS = _blocks("toml")


def test_the_docs_have_toml_examples() -> None:
    # README's sidecar, docs/sidecar.md's reference, docs/jinaga.md's sidecar and bridge
    assert len(TOML_BLOCKS) >= 4, TOML_BLOCKS


@pytest.mark.parametrize(("where", "text"), TOML_BLOCKS, ids=[w for w, _ in TOML_BLOCKS])
def test_each_toml_example_is_accepted(where: str, text: str) -> None:
    document: dict[str, Any] = tomllib.loads(text)
    if "jinaga" in document:  # `factbus jinaga-bridge --config` reads [factbus] + [jinaga]
        parse_bridge_config(document)
    else:  # `factbus sidecar --config`
        config = parse_config(document)
        assert config.settings().topic == document["factbus"]["topic"], where


def test_the_shipped_sidecar_configurations_are_accepted() -> None:
    load_config(ROOT / "examples" / "shop" / "sidecar.toml")
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    parse_config(tomllib.loads(configmap["data"]["sidecar.toml"]))


def test_the_readme_library_snippet_runs_as_printed(tmp_path: Path) -> None:
    snippets = [
        text
        for where, text in _blocks("python")
        if where.startswith("README.md:") and "asyncio.run(main())" in text
    ]
    assert len(snippets) == 1, snippets
    snippet = snippets[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTBUS_")}
    run = [sys.executable, "-c", snippet]
    first = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"paid 12\.50 for order Shop\.Order#\S+\n", first.stdout), first.stdout
    assert (tmp_path / "shop.db").exists()  # the SQLite store the snippet names
    # Run again on the same store: the fact was handled once and is not handled again.
    again = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "", again.stdout


def _option_rows(section: str) -> dict[str, str]:
    """``{option: default}`` from the table under ``## `section`…`` of docs/stores.md."""
    text = (ROOT / "docs" / "stores.md").read_text(encoding="utf-8")
    part = text.split(f"## `{section}")[1].split("\n## ")[0]
    rows: dict[str, str] = {}
    for names, defaults in re.findall(r"^\| (`[^|]+`) \| (`[^|]+`) \|", part, re.M):
        for name, default in zip(
            re.findall(r"`([^`]+)`", names), re.findall(r"`([^`]+)`", defaults), strict=True
        ):
            rows[name] = default
    return rows


def test_the_store_options_in_docs_are_the_code_s() -> None:
    from factbus.store.postgres_config import PostgresConfig
    from factbus.store.sqlite import SqliteStore

    sqlite = _option_rows("sqlite")
    assert set(sqlite) == {"commit_thread", "keep_bodies"}, sqlite
    plain = SqliteStore("sqlite:///:memory:")
    for name, default in sqlite.items():
        assert getattr(plain, name) is (default == "1"), name
        assert getattr(SqliteStore(f"sqlite:///:memory:?{name}=1"), name) is True

    postgres = _option_rows("postgresql")
    assert len(postgres) == 8, postgres
    defaults = PostgresConfig.from_url("postgresql://u@h/d")
    for name, default in postgres.items():
        value = getattr(defaults, name)
        shown = str(value).lower() if isinstance(value, bool | str) else f"{value:g}"
        assert shown == default, (name, value, default)
        given = PostgresConfig.from_url(f"postgresql://u@h/d?{name}={default}&sslmode=disable")
        assert name not in given.dsn and "sslmode=disable" in given.dsn, given.dsn
