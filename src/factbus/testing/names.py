"""The journal of a test run: every unique name its tests made and every broker they used.

A test run (a pytest session of factbus's suite) opens one journal file
(:meth:`Journal.start`) and exports its path in ``FACTBUS_TEST_NAMES``; every
process of the run (pytest itself, and the workers, sidecars and apps its tests
start, which inherit the variable) appends to it:

- ``name<TAB>NAME`` for each name :func:`factbus.testing.brokers.unique` made
  (:func:`record`): a prefix and 10 random hex digits, so an object on a broker
  whose name *contains* it was made by this run, and by no one else;
- ``broker<TAB>KIND<TAB>URL`` for each test broker a process asked for
  (:func:`record_broker`, called by :func:`~factbus.testing.brokers.broker_url`).

What a test made is the part of the journal written while it ran
(:meth:`Journal.offset` before, :meth:`Journal.read` after);
:mod:`factbus.testing.sweep` removes what those names made on those brokers.
The run holds an exclusive ``flock`` on its journal while it lives, so
``make brokers-clean`` can tell the journal of a finished (or killed) run from
that of a run still going on (:func:`finished_journals`), and never touches the
latter. Without ``FACTBUS_TEST_NAMES`` (a worker run by hand), recording does
nothing.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

ENV: Final = "FACTBUS_TEST_NAMES"
"""The environment variable holding the path of the current run's journal."""

DIR_ENV: Final = "FACTBUS_TEST_NAMES_DIR"
"""Where runs put their journals (default: ``<tmp>/factbus-test-names``), one
directory for every run on the machine, so a clean-up finds every finished one."""

_SUFFIX: Final = ".names"


def journal_dir() -> Path:
    """The directory of the journals (``FACTBUS_TEST_NAMES_DIR``, else a fixed one
    under the system's temporary directory)."""
    configured = os.environ.get(DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "factbus-test-names"


def record(name: str) -> None:
    """Note ``name`` in the current run's journal (nothing outside a run)."""
    _append(f"name\t{name}\n")


def record_broker(kind: str, url: str) -> None:
    """Note that the test now running uses test broker ``kind`` at ``url`` (nothing
    outside a run). Noted at each call: a test's part of the journal must show it."""
    _append(f"broker\t{kind}\t{url}\n")


def _append(line: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    # One write of one short line with O_APPEND: lines of concurrent processes
    # do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass
class Entries:
    """What a part of a journal holds: names made, and brokers used (kind -> URLs)."""

    names: set[str] = field(default_factory=set)
    brokers: dict[str, set[str]] = field(default_factory=dict)

    def update(self, other: Entries) -> None:
        """Add ``other``'s names and brokers to these."""
        self.names |= other.names
        for kind, urls in other.brokers.items():
            self.brokers.setdefault(kind, set()).update(urls)


class Journal:
    """One run's journal file. :meth:`start` makes (and locks) a new one; :meth:`of`
    opens an existing one to read."""

    def __init__(self, path: Path, lock: IO[bytes] | None = None) -> None:
        self.path = path
        self._lock = lock

    @classmethod
    def start(cls, directory: Path | None = None) -> Journal:
        """A new journal in ``directory`` (default :func:`journal_dir`), locked by
        this process until :meth:`close` (or its exit), and exported in
        ``FACTBUS_TEST_NAMES`` for this process and its children."""
        where = directory or journal_dir()
        where.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = where / f"{stamp}-{os.getpid()}-{os.urandom(3).hex()}{_SUFFIX}"
        # Locked under another name, then renamed (the lock is the file's, it
        # follows): :func:`finished_journals` never sees this journal unlocked,
        # which would take it for a finished run's, and delete it.
        making = path.with_name(path.name + ".new")
        lock = making.open("xb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            making.rename(path)
        except BaseException:
            lock.close()
            making.unlink(missing_ok=True)
            raise
        os.environ[ENV] = str(path)
        return cls(path, lock)

    @classmethod
    def of(cls, path: Path) -> Journal:
        """The journal at ``path``, to read."""
        return cls(path)

    def offset(self) -> int:
        """The journal's size now: :meth:`read` from it gives what was noted since."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, start: int = 0) -> Entries:
        """The names and brokers noted from byte ``start`` on (a line cut by a
        concurrent write is left out)."""
        entries = Entries()
        try:
            with self.path.open("rb") as file:
                file.seek(start)
                data = file.read()
        except FileNotFoundError:
            return entries
        for raw in data.decode(errors="replace").splitlines(keepends=True):
            if not raw.endswith("\n"):
                break
            kind, _, rest = raw.rstrip("\n").partition("\t")
            if kind == "name" and rest:
                entries.names.add(rest)
            elif kind == "broker":
                broker, _, url = rest.partition("\t")
                if broker and url:
                    entries.brokers.setdefault(broker, set()).add(url)
        return entries

    def close(self, *, remove: bool) -> None:
        """Stop exporting this journal and drop its lock; delete the file if ``remove``
        (all it names is gone from the brokers), else leave it for
        ``make brokers-clean``."""
        if os.environ.get(ENV) == str(self.path):
            del os.environ[ENV]
        if remove:
            self.path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def finished_journals(directory: Path | None = None) -> Iterator[Journal]:
    """The journals in ``directory`` (default :func:`journal_dir`) whose run is over:
    those no live process holds the lock of. A run still going on is skipped."""
    where = directory or journal_dir()
    if not where.is_dir():
        return
    for path in sorted(where.glob(f"*{_SUFFIX}")):
        try:
            probe = path.open("rb")
        except FileNotFoundError:
            continue
        with probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            fcntl.flock(probe, fcntl.LOCK_UN)
        yield Journal.of(path)
