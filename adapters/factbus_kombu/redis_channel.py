"""kombu's redis transport without its one lossy instant: taking a message.

kombu takes a message with ``BRPOP`` (a destructive read) and records it as
unacknowledged (the ``unacked`` hash and index that ``restore_visible`` reads)
only after the reply reached the client and was parsed. A consumer killed in
between (``kill -9``) loses that message: redis no longer has it anywhere.

:class:`Channel` closes that window and changes nothing else. It waits with
``BLMOVE q q RIGHT RIGHT``, which blocks like ``BRPOP`` until the queue has a
message but moves the last element back to where it was (nothing is taken), and
then takes up to the prefetch allowance with one Lua script that pops each
message *and* records it as unacknowledged in the same atomic step. At every
instant a message is therefore in its queue or in the unacked hash, where the
adapter's periodic restore finds it once ``visibility_timeout`` has passed.

Restoring puts a message back where it was taken from. kombu records each
unacked message with the exchange and routing key it was published with, and
its ``restore_visible`` routes it through that exchange again; but it learns an
exchange's type only from a declaration made on the *same* connection, and
takes an unknown exchange for a ``direct`` one. factbus binds its group queues
to ``topic`` exchanges with ``#``, which a direct lookup never matches: a
restore run by a connection that had not declared the topic (the adapter's
publishing connection in a consumer-only process, or another process
altogether) removed the message from the unacked hash and pushed it nowhere.
So :class:`Channel` records and hands out every message it takes as sent
through the default exchange to the queue it came from (``exchange ""``,
``routing_key <queue>``): any connection restores it into that queue, and only
that one (not a copy into every group's queue through the topic's exchange),
under a delivery tag of its own per queue (:func:`queue_tag`).
A record written that way by an older factbus (or a message kombu itself recorded
with its topic's exchange) still finds its queues on restore: an exchange this
connection has not declared is taken as ``topic`` (the only type factbus
declares on virtual transports), not as kombu's ``direct``.

Every configuration takes this way; there is no fallback to kombu's ``BRPOP``:

- ``global_keyprefix``: kombu's client prefixes the keys of the commands it
  knows (and only the first key of a script); the channel writes every key of
  its own commands in full (:meth:`Channel.key`), so the take, kombu's acks and
  kombu's restore all use ``<prefix><queue>`` and ``<prefix><unacked_key>``.
  The record's routing key is the queue's unprefixed name, which kombu's
  restore prefixes again when it pushes the message back.
- ``priority_steps``/``sep``: factbus publishes and gives back at priority 0;
  the channel waits on and takes from the list kombu files priority 0 under
  (``_q_for_pri(queue, 0)``), which is the queue's own name with the default
  steps. Messages another producer publishes at a higher priority go to other
  lists and are not read.
- ``basic_get`` (the dead-letter peek) takes through the same script.
- A channel consuming more than one queue (the adapter never does: one queue
  per subscription, one channel per connection) is refused with an error.
- ``ack_emulation=false`` (no unacked hash at all) is refused by the adapter's
  URL parsing (``KombuConfig``).

The same channel runs behind redis Sentinel (:class:`SentinelTransport`).
Needs redis >= 6.2 (``BLMOVE``).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

TAKE: str = """
local now = redis.call('TIME')
local at = tonumber(now[1]) + tonumber(now[2]) / 1000000
local back = cjson.encode(ARGV[3])
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local tag = tostring(cjson.decode(raw)['properties']['delivery_tag'])
  if string.sub(tag, 1, #ARGV[2]) ~= ARGV[2] then tag = ARGV[2] .. tag end
  redis.call('ZADD', KEYS[3], at, tag)
  redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',"",' .. back .. ']')
  taken[#taken + 1] = raw
end
return taken
"""
"""Pop up to ARGV[1] messages of the list KEYS[1] and record each, atomically, as
kombu's ``QoS.append`` does: ``HSET unacked tag [payload, "", ARGV[3]]`` (the
exchange and routing key that lead back to the queue ARGV[3], see the module
docstring) and ``ZADD unacked_index now tag`` (KEYS[2], KEYS[3]), where ``tag``
is the message's delivery tag prefixed with ARGV[2] (:func:`queue_tag`). Every
key is given in full (with kombu's ``global_keyprefix``)."""


class ChannelMisuse(RuntimeError):
    """The channel was used in a way that would bring kombu's lossy ``BRPOP`` back."""


def tag_prefix(queue: str) -> str:
    """What :func:`queue_tag` puts before a delivery tag taken from ``queue``."""
    return queue + "/"


def queue_tag(tag: Any, queue: str) -> str:
    """The delivery tag of a message taken from ``queue``: kombu's tag prefixed with
    the queue's name (once). kombu gives a message one tag when it is published
    and the topic exchange copies it, tag and all, into every group's queue; the
    unacked hash is keyed by tag, so one group's take overwrote another's record
    and its ack deleted it (a message the other group's dead consumer held was
    then never restored)."""
    text, prefix = str(tag), tag_prefix(queue)
    return text if text.startswith(prefix) else prefix + text


def back_to(payload: dict[str, Any], queue: str) -> dict[str, Any]:
    """``payload`` (a kombu message taken from ``queue``) marked as sent through the
    default exchange to ``queue``, under its :func:`queue_tag`: kombu's
    ``QoS.append`` records that, so a restore or a requeue puts it back into
    ``queue`` (see the module docstring), and acks and restores of other groups'
    copies never touch its record."""
    properties = payload["properties"]
    properties["delivery_tag"] = queue_tag(properties.get("delivery_tag"), queue)
    info = properties.setdefault("delivery_info", {})
    info["exchange"] = ""
    info["routing_key"] = queue
    return payload


class Channel(kombu_redis.Channel):
    """See the module docstring."""

    _factbus_queue: str | None = None
    _factbus_take: Any = None

    def key(self, name: str) -> str:
        """The redis key kombu keeps ``name`` under (``global_keyprefix`` + ``name``):
        what a command the channel sends itself must name."""
        return str(self.global_keyprefix) + name

    def list_key(self, queue: str) -> str:
        """The redis list ``queue``'s messages wait in: the one kombu files priority
        0 under (factbus publishes and gives back at priority 0), prefixed."""
        return self.key(str(self._q_for_pri(queue, 0)))

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if len(queues) != 1:
            raise ChannelMisuse(
                f"factbus' redis channel consumes one queue per channel, not {len(queues)} "
                f"({', '.join(queues)}): kombu's BRPOP over several would lose a message "
                "taken while its consumer is killed"
            )
        if timeout is None:
            timeout = self.brpop_timeout
        queue = queues[0]
        key = self.list_key(queue)
        self._factbus_queue = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = kombu_redis.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._factbus_queue
        try:
            try:
                waited = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        if waited is None or queue is None:
            raise kombu_redis.Empty()
        taken = self._take(queue)
        if not taken:  # another consumer of the queue was quicker
            raise kombu_redis.Empty()
        for raw in taken:
            self.connection._deliver(back_to(loads(bytes_to_str(raw)), queue), queue)
        return True

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """One message of ``queue`` or None. Unless ``no_ack``, taken and recorded as
        unacked in one step (kombu's own ``RPOP`` and then a record loses the
        message if the process dies in between)."""
        if no_ack:  # nothing to record: kombu's RPOP
            return super().basic_get(queue, no_ack=True, **kwargs)
        taken = self._take(queue, limit=1)
        if not taken:
            return None
        message = self.Message(back_to(loads(bytes_to_str(taken[0])), queue), channel=self)
        self.qos.append(message, message.delivery_tag)
        return message

    def typeof(self, exchange: str, default: str = "topic") -> Any:
        """The exchange type kombu routes ``exchange`` with: as declared on this
        connection, else ``topic`` (kombu's default, ``direct``, matches none of
        factbus' ``#`` bindings, so a restore would drop the message)."""
        return super().typeof(exchange, default)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        # kombu asks EXISTS, which its prefixing client leaves unprefixed: with a
        # global_keyprefix a passive declare (the adapter's lag) never found a queue.
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            for priority in self.priority_steps:
                pipe.exists(self.key(str(self._q_for_pri(queue, priority))))
            return any(pipe.execute())

    def _take(self, queue: str, limit: int | None = None) -> list[bytes]:
        """Pop and record as unacked, atomically, what the prefetch allows (at most
        ``limit``)."""
        qos = self.qos
        allowance = max(1, int(qos.can_consume_max_estimate() or 1))
        if limit is not None:
            allowance = min(allowance, limit)
        keys = [self.list_key(queue), self.key(qos.unacked_key), self.key(qos.unacked_index_key)]
        with self.conn_or_acquire() as client:
            if self.global_keyprefix:
                # kombu's client would prefix the script's first key (again) and no other.
                client = redis.Redis(connection_pool=client.connection_pool)
            if self._factbus_take is None:
                self._factbus_take = client.register_script(TAKE)
            result = self._factbus_take(
                keys=keys, args=[allowance, tag_prefix(queue), queue], client=client
            )
        return list(result or [])


class Transport(kombu_redis.Transport):
    """kombu's redis transport with :class:`Channel`."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """:class:`Channel` on the master a redis Sentinel names (kombu's ``sentinel://``)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
