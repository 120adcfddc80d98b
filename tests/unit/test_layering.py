"""Which part of factbus may import which: the dependencies run one way.

Read from the real source files (every ``import``, including those inside
functions), so a lazy import that turns an arrow back up fails here:

- nothing under ``factbus.sidecar`` imports ``factbus.jinaga`` (Jinaga's
  endpoints build on the sidecar; the sidecar finds them through the
  ``factbus.sidecar.protocols`` entry points, see factbus.sidecar.server);
- no module of the package imports a name from the package root
  ``factbus/__init__.py`` (which imports the Bus and most of the core): only
  submodules, e.g. ``from factbus.version import __version__``.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import factbus
from factbus.version import __version__

SRC = Path(factbus.__file__).parent
ROOT = SRC.parent.parent


def _imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in ``path``, relative ones resolved."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(SRC.parent).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, [alias.name for alias in node.names]


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_sidecar_never_imports_jinaga() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _modules(SRC / "sidecar")
        for line, module, names in _imports(path)
        if module == "factbus.jinaga"
        or module.startswith("factbus.jinaga.")
        or (module == "factbus" and "jinaga" in names)
    ]
    assert not found, "factbus.sidecar imports factbus.jinaga:\n" + "\n".join(found)


def test_no_module_imports_names_from_the_package_root() -> None:
    submodules = {path.stem for path in SRC.glob("*.py")} | {
        path.name for path in SRC.iterdir() if (path / "__init__.py").exists()
    }
    found = [
        f"{path.relative_to(ROOT)}:{line}: from factbus import {', '.join(names) or '(module)'}"
        for path in _modules(SRC)
        if path != SRC / "__init__.py"
        for line, module, names in _imports(path)
        if module == "factbus" and (not names or set(names) - submodules)
    ]
    assert not found, "imports from factbus/__init__.py inside factbus:\n" + "\n".join(found)


def test_the_version_is_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
    assert factbus.__version__ == __version__
