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

Used only where the plain case holds: one queue consumed on the channel, no
``global_keyprefix`` and no message priorities (factbus publishes none);
otherwise kombu's own ``BRPOP`` runs. Needs redis >= 6.2 (``BLMOVE``).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

TAKE: str = """
local now = redis.call('TIME')
local at = tonumber(now[1]) + tonumber(now[2]) / 1000000
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local props = cjson.decode(raw)['properties']
  local tag = props['delivery_tag']
  local info = props['delivery_info']
  redis.call('ZADD', KEYS[3], at, tag)
  redis.call('HSET', KEYS[2], tag,
    '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ','
        .. cjson.encode(info['routing_key']) .. ']')
  taken[#taken + 1] = raw
end
return taken
"""
"""Pop up to ARGV[1] messages of KEYS[1] and record each, atomically, as kombu's
``QoS.append`` does: ``HSET unacked tag [payload, exchange, routing_key]`` and
``ZADD unacked_index now tag`` (KEYS[2], KEYS[3])."""


class Channel(kombu_redis.Channel):
    """See the module docstring."""

    _factbus_queue: str | None = None
    _factbus_take: Any = None

    def _plain(self, queues: list[str]) -> bool:
        return len(queues) == 1 and not self.global_keyprefix

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not self._plain(queues):
            self._factbus_queue = None
            super()._brpop_start(timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queue = queues[0]
        self._factbus_queue = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = kombu_redis.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._factbus_queue
        if queue is None:
            return bool(super()._brpop_read(**options))
        try:
            try:
                waited = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        if waited is None:
            raise kombu_redis.Empty()
        taken = self._take(queue)
        if not taken:  # another consumer of the queue was quicker
            raise kombu_redis.Empty()
        for raw in taken:
            self.connection._deliver(loads(bytes_to_str(raw)), queue)
        return True

    def _take(self, queue: str) -> list[bytes]:
        """Pop and record as unacked, atomically, what the prefetch allows."""
        qos = self.qos
        allowance = max(1, int(qos.can_consume_max_estimate() or 1))
        with self.conn_or_acquire() as client:
            if self._factbus_take is None:
                self._factbus_take = client.register_script(TAKE)
            result = self._factbus_take(
                keys=[queue, qos.unacked_key, qos.unacked_index_key],
                args=[allowance],
                client=client,
            )
        return list(result or [])


class Transport(kombu_redis.Transport):
    """kombu's redis transport with :class:`Channel`."""

    Channel = Channel
