"""Every error factbus raises, each with a specific, user-readable reason."""

from __future__ import annotations


class FactbusError(Exception):
    """Base class of factbus errors."""


class InvalidFact(FactbusError, ValueError):
    """A value that cannot be part of a fact (it could not hash deterministically).

    ``field`` names where the problem is (``fields.total``, ``type``,
    ``predecessors.order``); ``reason`` says what is wrong.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NestingTooDeep(InvalidFact):
    """A value nested deeper than the configured limit."""


class EnvelopeError(FactbusError, ValueError):
    """A received envelope that is rejected; it goes to the dead-letter destination.

    ``code`` is a stable, machine-readable reason (``hash-mismatch``); the
    message says exactly what was wrong.
    """

    code = "invalid-envelope"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        """``code: message``, as carried in the dead-letter header."""
        return f"{self.code}: {self.message}"


class MalformedEnvelope(EnvelopeError):
    """Not JSON, or JSON that is not the envelope's shape."""

    code = "malformed"


class UnknownVersion(EnvelopeError):
    """An envelope version this node does not read."""

    code = "unknown-version"


class OversizedEnvelope(EnvelopeError):
    """An envelope larger than the configured maximum."""

    code = "oversized"


class TooDeep(EnvelopeError):
    """A value nested deeper than the configured limit."""

    code = "too-deep"


class InvalidValue(EnvelopeError):
    """A fact whose value cannot hash deterministically (NaN, lone surrogate, ...)."""

    code = "invalid-value"


class HashMismatch(EnvelopeError):
    """A fact whose recomputed hash differs from the hash it claims (tampered)."""

    code = "hash-mismatch"


class PredecessorCycle(EnvelopeError):
    """Facts in one envelope whose predecessor references form a cycle."""

    code = "cycle"


class ConfigError(FactbusError, ValueError):
    """A setting or URL that factbus cannot use."""


class StoreOwnedError(ConfigError):
    """A store that another group or fan-out node owns (see
    :func:`factbus.store.base.check_owner`): its handled marks are that owner's,
    so this bus would skip every fact the owner handled."""

    def __init__(self, store: str, owner: str, wanted: str) -> None:
        super().__init__(
            f"store {store} belongs to {owner}, not to {wanted}: its handled marks are "
            f"{owner}'s, so {wanted} would skip every fact {owner} already handled. "
            f"Give {wanted} a store of its own: another `schema` or `prefix` in a "
            f"PostgreSQL store URL (e.g. ?schema=..., one per group), another SQLite "
            f"file (the default is .factbus/<node>.db), or run it as {owner}"
        )
        self.store = store
        self.owner = owner
        self.wanted = wanted


class MissingDriver(FactbusError, ImportError):
    """An optional broker or store driver that is not installed."""

    def __init__(self, scheme: str, extra: str, cause: BaseException | None = None) -> None:
        super().__init__(
            f"the {scheme}:// adapter needs an optional dependency: "
            f"pip install 'factbus[{extra}]'" + (f" ({cause})" if cause else "")
        )
        self.extra = extra


class TransportError(FactbusError):
    """A broker operation failed (after the adapter's own retries).

    Transient unless it is a :class:`FatalTransportError`: trying again later may
    succeed (the broker is unreachable for now, a publish timed out), so
    ``Bus`` retries a failed receive or step with back-off.
    """


class FatalTransportError(TransportError):
    """A broker failure that trying again cannot mend: the broker refuses what the
    transport asks for (a queue that exists with other arguments, AMQP's
    ``PRECONDITION_FAILED``; access refused), or a subscription ended for good.

    ``Bus`` stops with it instead of retrying: :meth:`Bus.run` raises it,
    :attr:`Bus.consumer` ends with it, and ``factbus worker`` exits with status 3
    and prints it.
    """


class PublishError(TransportError):
    """A publish that the broker did not confirm (nack, unroutable, timeout)."""
