"""factbus.urls: typed option parsing, unknown options refused by every adapter,
and no secret in any repr, str, error message or log line of any adapter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import structlog
from structlog.testing import capture_logs

from conftest import broker_url
from factbus.errors import ConfigError
from factbus.store import open_store
from factbus.testing.brokers import with_options
from factbus.transport import open_transport
from factbus.urls import (
    coerce,
    parse_bool,
    parse_duration,
    parse_enum,
    parse_int,
    query_options,
    redact,
)

SECRET = "S3cr3tValue"


def test_typed_parsing() -> None:
    assert parse_bool("x", "Yes") is True
    assert parse_bool("x", "off") is False
    with pytest.raises(ConfigError, match=r"opt x='maybe' is not a valid bool"):
        parse_bool("x", "maybe", what="opt")
    assert parse_int("n", "42") == 42
    with pytest.raises(ConfigError, match=r"n='4.5' is not a valid int"):
        parse_int("n", "4.5")
    assert parse_duration("t", "2.5") == 2.5
    assert parse_duration("t", "250ms") == pytest.approx(0.25)
    assert parse_duration("t", "3s") == 3.0
    assert parse_duration("t", "1m") == 60.0
    with pytest.raises(ConfigError, match=r"t='soon' is not a valid duration"):
        parse_duration("t", "soon")
    assert parse_enum("e", "DROP", ("error", "drop")) == "drop"
    with pytest.raises(ConfigError, match=r"must be one of drop, error"):
        parse_enum("e", "keep", ("error", "drop"))
    assert coerce("b", "true", False) is True
    assert coerce("i", "7", 1) == 7
    assert coerce("f", "10ms", 1.0) == pytest.approx(0.01)
    assert coerce("s", "text", "") == "text"


def test_query_options() -> None:
    assert query_options("x://h/p?a=1&a=2&b=", ("a", "b"), what="x") == {"a": "2", "b": ""}
    with pytest.raises(ConfigError, match=r"unknown x option 'c' \(known: a, b\)"):
        query_options("x://h/p?c=1", ("a", "b"), what="x")


# -- unknown options are refused by every adapter ----------------------------------------

UNKNOWN_OPTION_URLS = [
    ("transport", "memory://ns?colour=blue"),
    ("transport", "amqp://guest:guest@127.0.0.1:5672/?colour=blue"),
    ("transport", "kafka://127.0.0.1:9092?colour=blue"),
    ("transport", "kombu+redis://127.0.0.1:6379/0?colour=blue"),
    ("transport", "kombu+redis://127.0.0.1:6379/0?factbus_colour=blue"),
    ("store", "memory://?colour=blue"),
    ("store", "sqlite:///:memory:?colour=blue"),
]


@pytest.mark.parametrize(("kind", "url"), UNKNOWN_OPTION_URLS)
def test_unknown_options_are_refused(kind: str, url: str) -> None:
    opener = open_transport if kind == "transport" else open_store
    with pytest.raises(ConfigError, match="colour"):
        opener(url)


BAD_VALUE_URLS = [
    ("transport", "amqp://127.0.0.1/?prefetch=lots", "prefetch='lots' is not a valid int"),
    ("transport", "amqp://127.0.0.1/?unroutable=keep", "must be one of drop, error"),
    ("transport", "amqp://127.0.0.1/?publish_timeout=250ms", None),
    ("transport", "kafka://h:9092?join_timeout=never", "join_timeout='never'"),
    ("transport", "kafka://h:9092?group_protocol=other", "must be one of classic, consumer"),
    ("transport", "kombu+redis://h:6379/0?factbus_prefetch=x", "factbus_prefetch='x'"),
    ("transport", "kombu+amqp://h:5672//?ssl=perhaps", "ssl='perhaps' is not a valid bool"),
    ("store", "sqlite:///:memory:?keep_bodies=perhaps", "keep_bodies='perhaps'"),
    ("store", "postgresql://h/db?custom_plans=perhaps", "custom_plans='perhaps'"),
    ("store", "postgresql://h/db?pool_max=many", "pool_max='many' is not a valid int"),
]


@pytest.mark.parametrize(("kind", "url", "message"), BAD_VALUE_URLS)
def test_bad_values_are_named(kind: str, url: str, message: str | None) -> None:
    opener = open_transport if kind == "transport" else open_store
    if message is None:
        opener(url)  # a duration with a unit is accepted
        return
    with pytest.raises(ConfigError, match=message):
        opener(url)


# -- no secret in any repr, str, error or log line ------------------------------------------

SECRET_URLS = [
    f"amqp://user:{SECRET}@127.0.0.1:5672/vhost",
    f"amqps://user:{SECRET}@127.0.0.1/?verify=false&auth=plain",
    f"kafka://user:{SECRET}@h1:9092,h2:9092?security_protocol=sasl_ssl&sasl_mechanism=PLAIN",
    f"kafka://h:9092?sasl_password={SECRET}&ssl_key_password={SECRET}",
    f"kafka://h:9092?rdkafka.ssl.key.pem={SECRET}&producer.sasl.oauthbearer.config={SECRET}",
    f"kombu+redis://:{SECRET}@127.0.0.1:6379/0",
    f"kombu+rediss://user:{SECRET}@127.0.0.1:6379/0?ssl_cert_reqs=none",
    f"kombu+amqp://user:{SECRET}@127.0.0.1:5672//?heartbeat=5",
    "kombu+redis://127.0.0.1:6379/0?transport.sentinel_kwargs="
    + quote(f'{{"password": "{SECRET}"}}'),
    f"postgresql://factbus:{SECRET}@127.0.0.1:5432/db?schema=s1",
    f"postgres://127.0.0.1/db?password={SECRET}&sslpassword={SECRET}",
]


def _objects(url: str) -> Iterator[object]:
    if url.startswith("postgres"):
        store = open_store(url)
        yield store
        yield getattr(store, "config", None)
    else:
        transport = open_transport(url)
        yield transport
        yield getattr(transport, "config", None)


def test_no_secret_in_a_url_without_scheme() -> None:
    with pytest.raises(ConfigError) as error:
        open_transport(f"u:{SECRET}@127.0.0.1:5672")
    assert SECRET not in str(error.value)
    assert redact(f"u:{SECRET}@h/x") == "u:***@h/x"


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_secret_in_reprs(url: str) -> None:
    shown = redact(url)
    assert SECRET not in shown
    assert quote(SECRET) not in shown
    assert urlsplit(shown).hostname == urlsplit(url).hostname  # still says where
    for obj in _objects(url):
        assert SECRET not in repr(obj), type(obj)
        assert SECRET not in str(obj), type(obj)
    if url.startswith("amqp"):
        config = getattr(open_transport(url), "config", None)
        assert config is not None
        assert SECRET not in config.display_url()


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://user:{SECRET}@127.0.0.1:5672/?colour=1",
        f"kafka://user:{SECRET}@h:9092",  # credentials without SASL
        f"kombu+redis://:{SECRET}@127.0.0.1:6379/0?colour=1",
        f"postgresql://u:{SECRET}@127.0.0.1/db?pool_min=5&pool_max=1",
        f"u:{SECRET}@127.0.0.1/db",  # no scheme: refused by open_store
        f"mongodb://u:{SECRET}@127.0.0.1/db",  # no store for this scheme
    ],
)
def test_no_secret_in_config_errors(url: str) -> None:
    opener = open_store if url.startswith(("postgres", "u:", "mongodb")) else open_transport
    with pytest.raises(ConfigError) as error:
        opener(url)
    assert SECRET not in str(error.value)


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("amqp", "connect_timeout=2&publish_timeout=2"),
        ("kombu_amqp", "factbus_retry_timeout=1&connect_timeout=2"),
        ("redis", "factbus_retry_timeout=1&connect_timeout=2"),
        ("postgres", "connect_timeout=5"),
    ],
)
def test_no_secret_in_logs_of_a_failed_login(
    name: str, options: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A real broker refuses a wrong password: neither the error nor any log line
    (structlog or stdlib, every level) shows it."""
    url = with_options(_with_password(broker_url(name), SECRET), options)
    caplog.set_level(logging.DEBUG)
    structlog.reset_defaults()

    async def attempt() -> BaseException | None:
        try:
            if name == "postgres":
                store = open_store(url)
                await asyncio.wait_for(store.open(), 20)
                await store.close()
            else:
                transport = open_transport(url)
                try:
                    await asyncio.wait_for(transport.connect(), 20)
                    await transport.subscribe(f"urls-{name}", "urls-test")
                finally:
                    await transport.close()
        except Exception as error:  # the refusal itself is what is checked
            return error
        return None

    with capture_logs() as logs:
        error = asyncio.run(attempt())
    texts = [repr(entry) for entry in logs] + [r.getMessage() for r in caplog.records]
    texts += [repr(getattr(r, "__dict__", {})) for r in caplog.records]
    if error is not None:
        texts += [str(error), repr(error)]
    leaks = [text for text in texts if SECRET in text]
    assert not leaks, leaks
    if name in ("amqp", "kombu_amqp", "postgres"):
        # These brokers check passwords: the wrong one must have been refused.
        assert error is not None
