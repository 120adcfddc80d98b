"""Inspect, replay or purge a topic's dead letters (rejected envelopes, failed facts).

``factbus dlq list``: one line per dead letter, oldest first: its number, the
reason code and message, its size and its facts (if it still decodes).
``factbus dlq show N``: dead letter number N with every header, its reason and
its facts as JSON (or, if it does not decode, why and the raw body).
``factbus dlq replay``: publish the dead letters back to the topic, each as it
was (same body; the ``x-factbus-dead-letter-*`` headers dropped). Only letters
that decode are replayed unless ``--include-undecodable``; ``--reason`` keeps
those whose reason starts with a prefix (``handler``, ``hash-mismatch``).
Replay does **not** remove them: a transport can only read dead letters without
removing them or purge them all, so removing after a replay would either race
with letters dead-lettered meanwhile or lose a letter that failed again. Facts
are idempotent, so a letter replayed twice is harmless; once the consumers
handled the replay (``factbus parked`` shows nothing stuck), run ``purge``.
``factbus dlq purge --yes``: remove every dead letter of the topic.

The transport and topic come from ``--transport``/``--topic`` or the usual
settings (``FACTBUS_TRANSPORT``, ``FACTBUS_TOPIC``, ``FACTBUS_CONFIG``). A
``memory://`` transport only holds dead letters made in the same process.
Exit status: 0 done, 1 nothing to do (no such letter), 2 error (one line on
stderr; ``--log-level debug`` logs the details).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import structlog
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from factbus.config import Settings
from factbus.envelope import CodecLimits, decode
from factbus.errors import ConfigError, EnvelopeError, FactbusError, TransportError
from factbus.fact import Fact
from factbus.headers import DEAD_LETTER_PREFIX, HEADER_DEAD_LETTER_TOPIC, HEADER_REPLAYED_REASON
from factbus.logging import configure_logging
from factbus.transport import DeadLetter, Message, Transport, open_transport
from factbus.urls import redact

log = structlog.get_logger("factbus.commands.dlq")

T = TypeVar("T")

REPLAY_CHUNK = 500
"""Messages per ``publish`` call when replaying (confirmed together)."""
_PREVIEW = 2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the paragraphs
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--transport", default=None, help="transport URL (default: settings)")
        sub.add_argument("--topic", default=None, help="topic (default: settings, 'facts')")
        sub.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for the broker"
        )

    listing = actions.add_parser("list", help="list dead letters, oldest first")
    common(listing)
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = actions.add_parser("show", help="show dead letter number N (from `list`)")
    show.add_argument("number", type=int, metavar="N")
    common(show)
    show.add_argument("--json", action="store_true", help="print it as one JSON object")

    replay = actions.add_parser("replay", help="publish dead letters back to the topic")
    common(replay)
    replay.add_argument("--limit", type=int, default=10000, help="at most this many (10000)")
    replay.add_argument("--reason", default=None, help="only reasons starting with this")
    replay.add_argument(
        "--include-undecodable",
        action="store_true",
        help="also replay letters that do not decode (they will be rejected again)",
    )
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")

    purge = actions.add_parser("purge", help="remove every dead letter of the topic")
    common(purge)
    purge.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(transport=args.transport, topic=args.topic)
    if not structlog.is_configured():
        configure_logging(settings.log_level)
    if args.action == "purge" and not args.yes:
        raise ConfigError(
            f"purge removes every dead letter of topic {settings.topic!r}: add --yes to confirm"
        )
    if getattr(args, "limit", 1) < 1:
        raise ConfigError("--limit must be at least 1")
    if args.action == "show" and args.number < 1:
        raise ConfigError("dead letters are numbered from 1 (see `factbus dlq list`)")
    action = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}[args.action]
    return asyncio.run(_with_transport(settings, args, action))


async def _with_transport(
    settings: Settings,
    args: argparse.Namespace,
    action: Callable[[Transport, Settings, argparse.Namespace, Console], Awaitable[int]],
) -> int:
    url = settings.transport
    console = Console(highlight=False, soft_wrap=True)
    if url.startswith("memory:"):
        print(
            "factbus dlq: note: memory:// keeps dead letters only in the process that made them",
            file=sys.stderr,
        )
    transport = open_transport(url)
    try:
        await _bounded(transport.connect(), args.timeout, f"connect to {redact(url)}")
        return await action(transport, settings, args, console)
    finally:
        try:
            await asyncio.wait_for(transport.aclose(), args.timeout)
        except Exception:
            log.debug("closing the transport failed", exc_info=True)


async def _bounded(step: Awaitable[T], timeout: float, what: str) -> T:
    """``step`` with a deadline; driver errors become one-line TransportErrors."""
    try:
        return await asyncio.wait_for(step, timeout)
    except FactbusError:
        raise
    except TimeoutError:
        raise TransportError(f"could not {what} within {timeout:g}s") from None
    except Exception as error:
        log.debug("transport operation failed", what=what, exc_info=True)
        raise TransportError(f"could not {what}: {type(error).__name__}: {error}") from error


async def _read(transport: Transport, topic: str, limit: int, timeout: float) -> list[DeadLetter]:
    return await _bounded(
        transport.read_dead_letters(topic, limit), timeout, f"read dead letters of {topic!r}"
    )


# -- describing letters --------------------------------------------------------


def reason_code(letter: DeadLetter) -> str:
    """The machine-readable part of the reason (``hash-mismatch``, ``handler``)."""
    reason = letter.reason
    code = reason.split(":", 1)[0].strip()
    return code.split()[0] if code else "unknown"


def decode_letter(letter: DeadLetter, limits: CodecLimits) -> tuple[list[Fact] | None, str]:
    """The letter's facts, or ``None`` and why it does not decode."""
    try:
        return decode(letter.body, limits), ""
    except EnvelopeError as error:
        return None, error.reason


def describe(index: int, letter: DeadLetter, limits: CodecLimits) -> dict[str, Any]:
    facts, error = decode_letter(letter, limits)
    return {
        "number": index,
        "reason": letter.reason,
        "code": reason_code(letter),
        "bytes": len(letter.body),
        "topic": letter.headers.get(HEADER_DEAD_LETTER_TOPIC),
        "facts": None if facts is None else [str(f.ref) for f in facts],
        "head": None if not facts else {"type": facts[-1].type, "hash": facts[-1].hash},
        "decode_error": error or None,
    }


# -- actions ------------------------------------------------------------------


async def _list(
    transport: Transport, settings: Settings, args: argparse.Namespace, console: Console
) -> int:
    topic = settings.topic
    letters = await _read(transport, topic, args.limit, args.timeout)
    limits = CodecLimits.of(settings)
    rows = [describe(i, letter, limits) for i, letter in enumerate(letters, 1)]
    if args.json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    if not rows:
        console.print(f"no dead letters for topic {escape(topic)!r}")
        return 0
    table = Table(title=f"dead letters of {topic!r} (oldest first)")
    for column in ("#", "reason", "bytes", "facts"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if row["facts"] is None:
            facts = "[dim]does not decode[/]"
        else:
            facts = f"{len(row['facts'])}: head {escape(row['facts'][-1])}"
        table.add_row(
            str(row["number"]), escape(_shorten(row["reason"], 160)), str(row["bytes"]), facts
        )
    console.print(table)
    if len(rows) == args.limit:
        console.print(f"(first {args.limit}; use --limit to see more)")
    return 0


async def _show(
    transport: Transport, settings: Settings, args: argparse.Namespace, console: Console
) -> int:
    topic = settings.topic
    letters = await _read(transport, topic, args.number, args.timeout)
    if len(letters) < args.number:
        print(
            f"factbus dlq: no dead letter #{args.number} for topic {topic!r} "
            f"(there are {len(letters)})",
            file=sys.stderr,
        )
        return 1
    letter = letters[args.number - 1]
    limits = CodecLimits.of(settings)
    facts, error = decode_letter(letter, limits)
    if args.json:
        record = describe(args.number, letter, limits)
        record["headers"] = dict(letter.headers)
        record["fact_bodies"] = None if facts is None else [f.to_wire() for f in facts]
        if facts is None:
            record["body"] = letter.body[:_PREVIEW].decode("utf-8", "replace")
        sys.stdout.write(orjson.dumps(record, default=dict).decode() + "\n")
        return 0
    console.print(f"[bold]dead letter #{args.number}[/] of topic {escape(topic)!r}")
    console.print(f"reason: {escape(letter.reason)}")
    console.print(f"size:   {len(letter.body)} bytes")
    console.print("headers:")
    for key, value in sorted(letter.headers.items()):
        console.print(f"  {escape(key)}: {escape(str(value))}")
    if facts is not None:
        console.print(f"facts ({len(facts)}, predecessors first):")
        body = orjson.dumps([f.to_wire() for f in facts], default=dict, option=orjson.OPT_INDENT_2)
        console.print(escape(body.decode()))
        return 0
    console.print(f"does not decode: {escape(error)}")
    console.print(f"body (first {min(len(letter.body), _PREVIEW)} bytes):")
    console.print(escape(_preview(letter.body)))
    return 0


async def _replay(
    transport: Transport, settings: Settings, args: argparse.Namespace, console: Console
) -> int:
    topic = settings.topic
    letters = await _read(transport, topic, args.limit, args.timeout)
    limits = CodecLimits.of(settings)
    chosen = [
        letter for letter in letters if args.reason is None or letter.reason.startswith(args.reason)
    ]
    messages: list[Message] = []
    undecodable = 0
    for letter in chosen:
        facts, _ = decode_letter(letter, limits)
        if facts is None:
            undecodable += 1
            if not args.include_undecodable:
                continue
        messages.append(replay_message(letter, facts))
    verb = "would replay" if args.dry_run else "replayed"
    if not args.dry_run:
        for start in range(0, len(messages), REPLAY_CHUNK):
            chunk = messages[start : start + REPLAY_CHUNK]
            await _bounded(transport.publish(topic, chunk), args.timeout, f"publish to {topic!r}")
    log.info("dead letters replayed", topic=topic, replayed=len(messages), dry_run=args.dry_run)
    skipped = len(chosen) - len(messages)
    console.print(
        f"{verb} {len(messages)} of {len(letters)} dead letters of {topic!r}"
        + (f" ({len(letters) - len(chosen)} did not match --reason)" if args.reason else "")
        + (f" (skipped {skipped} that do not decode)" if skipped else "")
        + (f" ({undecodable} do not decode)" if undecodable and not skipped else "")
        + "; they stay in the dead-letter destination: `factbus dlq purge --yes` once handled"
    )
    return 0


def replay_message(letter: DeadLetter, facts: Sequence[Fact] | None) -> Message:
    """The message that puts ``letter`` back on its topic (same body; the broker
    message id is the head fact's hash, as when it was first published)."""
    headers = {
        k: v
        for k, v in letter.headers.items()
        if not k.lower().startswith(DEAD_LETTER_PREFIX) and isinstance(v, str)
    }
    headers[HEADER_REPLAYED_REASON] = letter.reason[:200]
    if facts:
        head = facts[-1].hash
        return Message(letter.body, head, head, headers)
    digest = hashlib.sha256(letter.body).hexdigest()
    return Message(letter.body, digest, None, headers)


async def _purge(
    transport: Transport, settings: Settings, args: argparse.Namespace, console: Console
) -> int:
    topic = settings.topic
    removed = await _bounded(
        transport.purge_dead_letters(topic), args.timeout, f"purge dead letters of {topic!r}"
    )
    console.print(f"removed {removed} dead letters of {topic!r}")
    return 0


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _preview(body: bytes) -> str:
    head = body[:_PREVIEW]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return repr(head)
    return text + ("…" if len(body) > _PREVIEW else "")


__all__ = ["add_arguments", "describe", "reason_code", "replay_message", "run"]
