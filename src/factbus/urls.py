"""URL options and credential redaction, for every transport and store URL.

Every adapter reads its options from its URL's query string with these helpers,
so all of them read values the same way and refuse the same mistakes:

- :func:`parse_bool`: ``1/true/yes/on`` and ``0/false/no/off`` (any case).
- :func:`parse_int`, :func:`parse_float`.
- :func:`parse_duration`: seconds, as a plain number (``2.5``) or with a unit
  (``250ms``, ``2.5s``, ``1m``). Every ``float`` option of factbus is a duration.
- :func:`parse_enum`: one of a fixed set of words (case-insensitive, returned
  lower-case).
- :func:`coerce`: the parser picked by the type of the option's default.
- :func:`refuse_unknown`: the :class:`~factbus.errors.ConfigError` for an option
  the adapter does not know (an unknown option is never ignored silently).

:func:`redact` is the one function that makes a URL safe to show: every repr,
log line and error message that names a URL passes it through ``redact``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from factbus.errors import ConfigError

__all__ = [
    "SECRET_NAME",
    "coerce",
    "is_secret",
    "parse_bool",
    "parse_duration",
    "parse_enum",
    "parse_float",
    "parse_int",
    "query_options",
    "redact",
    "refuse_unknown",
]

TRUE: Final = ("1", "true", "yes", "on")
FALSE: Final = ("0", "false", "no", "off")

SECRET_NAME: Final = re.compile(
    r"pass|secret|token|credential|key|private|auth|oauthbearer", re.IGNORECASE
)
"""Option names whose values are never shown (``sasl_password``, ``ssl_key_password``,
``rdkafka.ssl.key.pem``, ``transport.sentinel_kwargs`` holding ``"password"``...)."""

_DURATION = re.compile(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|min)?\s*\Z")
_UNIT_SECONDS: Final = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0}
_HIDDEN: Final = "***"


def _label(what: str, name: str) -> str:
    return f"{what} {name}" if what else name


def parse_bool(name: str, raw: str, *, what: str = "") -> bool:
    """``raw`` as a boolean. :raises ConfigError: naming ``what`` option ``name``."""
    lowered = raw.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ConfigError(f"{_label(what, name)}={raw!r} is not a valid bool (use true or false)")


def parse_int(name: str, raw: str, *, what: str = "") -> int:
    """``raw`` as an integer. :raises ConfigError: naming the option."""
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{_label(what, name)}={raw!r} is not a valid int") from None


def parse_float(name: str, raw: str, *, what: str = "") -> float:
    """``raw`` as a float. :raises ConfigError: naming the option."""
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{_label(what, name)}={raw!r} is not a valid float") from None


def parse_duration(name: str, raw: str, *, what: str = "") -> float:
    """``raw`` as seconds: ``2.5``, ``2.5s``, ``250ms``, ``1m`` (or ``1min``).

    :raises ConfigError: not a number with one of those units.
    """
    match = _DURATION.match(raw.lower())
    if match is None:
        raise ConfigError(
            f"{_label(what, name)}={raw!r} is not a valid duration (seconds, or 250ms, 2s, 1m)"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_enum(name: str, raw: str, choices: Collection[str], *, what: str = "") -> str:
    """``raw`` lower-cased, if it is one of ``choices``. :raises ConfigError: listing them."""
    lowered = raw.strip().lower()
    if lowered not in choices:
        raise ConfigError(
            f"{_label(what, name)}={raw!r}: must be one of {', '.join(sorted(choices))}"
        )
    return lowered


def coerce(name: str, raw: str, default: Any, *, what: str = "") -> Any:
    """``raw`` parsed like ``default``: bool, int, float (a duration), else text as is."""
    if isinstance(default, bool):
        return parse_bool(name, raw, what=what)
    if isinstance(default, int):
        return parse_int(name, raw, what=what)
    if isinstance(default, float):
        return parse_duration(name, raw, what=what)
    return raw


def refuse_unknown(name: str, known: Iterable[str], *, what: str) -> ConfigError:
    """The error for an unknown option ``name`` of ``what`` (raise it)."""
    listed = ", ".join(sorted(known)) or "none"
    return ConfigError(f"unknown {what} option {name!r} (known: {listed})")


def query_options(url: str, known: Collection[str], *, what: str) -> dict[str, str]:
    """``url``'s query options as a dict (the last value of a repeated name wins).

    :raises ConfigError: an option not in ``known``.
    """
    options: dict[str, str] = {}
    for name, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in known:
            raise refuse_unknown(name, known, what=what)
        options[name] = raw
    return options


def is_secret(name: str) -> bool:
    """Whether an option called ``name`` may hold a secret (its value is never shown)."""
    return SECRET_NAME.search(name) is not None


def _redact_userinfo(rest: str) -> str:
    """``rest`` (what follows ``scheme://``) with the user-info password hidden.

    The user info ends at the last ``@`` before the first ``/``, so a password
    holding a raw ``@``, ``?`` or ``#`` is hidden whole."""
    slash = rest.find("/")
    at = (rest if slash < 0 else rest[:slash]).rfind("@")
    if at < 0:
        return rest
    user, has_password, _ = rest[:at].partition(":")
    return f"{user}:{_HIDDEN}{rest[at:]}" if has_password else rest


def _redact_pairs(query: str) -> Iterator[str]:
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        decoded_name = unquote_plus(name)
        if eq and (is_secret(decoded_name) or is_secret(unquote_plus(value))):
            yield f"{name}={_HIDDEN}"
        else:
            yield pair


def _redact_one(url: str) -> str:
    scheme_end = url.find("//")
    if scheme_end >= 0:
        url = url[: scheme_end + 2] + _redact_userinfo(url[scheme_end + 2 :])
    else:  # no scheme (a mistake being reported): user info may still lead the text
        url = _redact_userinfo(url)
    head, question, query = url.partition("?")
    if not question:
        return url
    query, hash_, fragment = query.partition("#")
    return head + question + "&".join(_redact_pairs(query)) + hash_ + fragment


def redact(url: str) -> str:
    """``url`` safe for logs, reprs and error messages.

    The user-info password becomes ``***`` (``amqp://guest:***@host``; the user
    name stays), and so does the value of every query option whose name looks
    like a secret (:data:`SECRET_NAME`) or whose value mentions one (a JSON
    option such as ``transport.sentinel_kwargs={"password": ...}``). Anything
    else is kept verbatim. Works on several ``host:port`` pairs in one netloc
    (``kafka://u:p@h1:9092,h2:9092``) and on kombu's ``;``-separated fail-over
    URLs.
    """
    return ";".join(_redact_one(part) for part in url.split(";"))
