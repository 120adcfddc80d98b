"""structlog set-up: console output in a terminal, JSON lines otherwise.

The bound logger filters by level before any processor runs, so a disabled
level costs one method call and renders nothing (the pipeline logs per batch,
never per fact, above debug).

Lines go to ``sys.stderr`` as it is when each line is written, not as it was
when logging was configured: a test or host that swaps ``sys.stderr`` sees the
lines written afterwards.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class CurrentStderr:
    """A file-like object that writes to whatever ``sys.stderr`` is right now."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class StderrLoggerFactory:
    """structlog logger factory: :class:`structlog.PrintLogger` over :class:`CurrentStderr`.

    ``PrintLoggerFactory(file=sys.stderr)`` would bind the stream object of
    configure time (and, with ``cache_logger_on_first_use``, keep it forever).
    """

    def __init__(self) -> None:
        self._stream = CurrentStderr()

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(self._stream)  # type: ignore[arg-type]


def configure_logging(level: str = "warning", *, json: bool | None = None) -> None:
    """Configure structlog for factbus and its host process.

    ``json=None`` picks console rendering when stderr is a terminal.
    """
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (use {', '.join(_LEVELS)})")
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=StderrLoggerFactory(),
        cache_logger_on_first_use=True,
    )
