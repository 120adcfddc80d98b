"""factbus: share immutable, content-addressed facts over any message broker.

Facts are hashed from their content (Jinaga-compatible), deduplicated, and
handed to handlers only after their predecessors (causal order).
"""

from factbus.bus import Bus
from factbus.config import Settings
from factbus.dispatcher import HandlerFailed, Middleware, RetryPolicy
from factbus.envelope import CodecLimits, decode, encode, topological
from factbus.errors import (
    ConfigError,
    EnvelopeError,
    FactbusError,
    FatalTransportError,
    HashMismatch,
    InvalidFact,
    InvalidValue,
    MalformedEnvelope,
    MissingDriver,
    OversizedEnvelope,
    PredecessorCycle,
    PublishError,
    StoreOwnedError,
    TooDeep,
    TransportError,
    UnknownVersion,
)
from factbus.fact import Fact, FactRef
from factbus.logging import configure_logging
from factbus.pipeline import PipelineStats
from factbus.store import Store, open_store
from factbus.transport import Capabilities, Delivery, Message, Transport, open_transport
from factbus.version import __version__

__all__ = [
    "Bus",
    "Capabilities",
    "CodecLimits",
    "ConfigError",
    "Delivery",
    "EnvelopeError",
    "Fact",
    "FactRef",
    "FactbusError",
    "FatalTransportError",
    "HandlerFailed",
    "HashMismatch",
    "InvalidFact",
    "InvalidValue",
    "MalformedEnvelope",
    "Message",
    "Middleware",
    "MissingDriver",
    "OversizedEnvelope",
    "PipelineStats",
    "PredecessorCycle",
    "PublishError",
    "RetryPolicy",
    "Settings",
    "Store",
    "StoreOwnedError",
    "TooDeep",
    "Transport",
    "TransportError",
    "UnknownVersion",
    "__version__",
    "configure_logging",
    "decode",
    "encode",
    "open_store",
    "open_transport",
    "topological",
]
