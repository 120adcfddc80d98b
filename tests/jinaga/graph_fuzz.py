"""What the Jinaga graph fuzz tests (test_jinaga_graph, test_jinaga_endpoints) mutate
a good graph body with: the format's own tokens, and one edit applied to a body."""

from __future__ import annotations

from collections.abc import Iterable

GRAPH_TOKENS: tuple[bytes, ...] = (
    b"\n",
    b"\n\n",
    b"PK0",
    b"PK9",
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b"0",
    b"1",
    b"-1",
    b"99",
    b"null",
    b'"T"',
    b"{}",
    b'{"p":0}',
    b"NaN",
    b"1e400",
    b"\\",
    b"\xff",
    b"\r",
    b"\x00",
    b":",
    b",",
)
"""Pieces of the graph format (separators, predecessor lines, JSON values, bytes that
are not UTF-8 or are control characters) that make near-miss bodies."""


def mutate(data: bytes, edits: Iterable[tuple[int, int, bytes]]) -> bytes:
    """``data`` with each ``(kind, pos, chunk)`` applied in turn at ``pos`` (modulo
    the body's length + 1): kind 0 inserts ``chunk``, 1 deletes as many bytes as
    ``chunk`` has, 2 overwrites them with ``chunk``."""
    out = bytearray(data)
    for kind, pos, chunk in edits:
        pos = pos % (len(out) + 1)
        if kind == 0:
            out[pos:pos] = chunk
        elif kind == 1:
            del out[pos : pos + len(chunk)]
        else:
            out[pos : pos + len(chunk)] = chunk
    return bytes(out)
