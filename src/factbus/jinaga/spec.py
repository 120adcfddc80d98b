"""The Jinaga specification text that jinaga.js sends to ``POST /feeds``, and the subset served.

jinaga.js 6.11 writes a request as declarations, one per given, then the
specification (``describeDeclaration`` + ``describeSpecification``)::

    let s: Shop.Store = #<base64 hash>

    (s: Shop.Store) {
        o: Shop.Order [
            o->store: Shop.Store = s
            !E {
                x: Shop.Order.Cancelled [
                    x->order: Shop.Order = o
                ]
            }
        ]
    } => {
        lines = {
            l: Shop.Line [
                l->order: Shop.Order = o
            ]
        }
    }

:func:`parse_request` reads the whole grammar jinaga.js writes (labels,
roles, path conditions, ``E``/``!E`` conditions, projections) and then
refuses, with :class:`UnsupportedSpecification` saying what and why, what
factbus does not serve. The supported subset (docs/jinaga.md):

- exactly one given, declared as ``let name: Type = #hash``, with no
  conditions of its own;
- matches whose conditions are path conditions
  ``u->r1: T1->r2: T2 = label->p1: P1`` (successor steps on the left,
  predecessor steps on the right, each by role; the common
  ``x.successors(Type, y => y.role)`` is ``y->role: X = x``), where the first
  path condition of a match names an earlier label;
- ``E { ... }`` and ``!E { ... }`` conditions one level deep: their matches
  may hold path conditions only;
- projections: child specifications (``name = { matches } => ...``) under
  the same rules, nested up to 16 levels; field, hash, fact and time projections are
  accepted and play no part on the server (jinaga.js removes them before
  sending).

Anything else (several givens, conditions on a given, nested existential
conditions, fact literals in declarations) raises
:class:`UnsupportedSpecification`; text that is not the grammar raises
:class:`SpecificationSyntaxError` with the offset and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from factbus.errors import FactbusError
from factbus.fact import FactRef

MAX_SPECIFICATION_CHARS: Final = 64 * 1024
MAX_CHILD_LEVELS: Final = 16
"""Child specifications nested deeper than this are refused (the parser recurses)."""


class SpecificationError(FactbusError, ValueError):
    """A specification the server cannot serve; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecificationSyntaxError(SpecificationError):
    """Text that is not Jinaga specification syntax."""


class UnsupportedSpecification(SpecificationError):
    """Valid Jinaga syntax outside the subset factbus serves."""


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    predecessor_type: str


@dataclass(frozen=True, slots=True)
class PathCondition:
    """``unknown roles_left... = label_right roles_right...``."""

    roles_left: tuple[Role, ...]
    label_right: str
    roles_right: tuple[Role, ...]


@dataclass(frozen=True, slots=True)
class ExistentialCondition:
    exists: bool
    matches: tuple[Match, ...]


Condition = PathCondition | ExistentialCondition


@dataclass(frozen=True, slots=True)
class Match:
    unknown: Label
    conditions: tuple[Condition, ...]

    @property
    def paths(self) -> tuple[PathCondition, ...]:
        return tuple(c for c in self.conditions if isinstance(c, PathCondition))

    @property
    def existentials(self) -> tuple[ExistentialCondition, ...]:
        return tuple(c for c in self.conditions if isinstance(c, ExistentialCondition))


@dataclass(frozen=True, slots=True)
class ChildSpecification:
    """A ``name = { matches } => projection`` component of a projection."""

    name: str
    matches: tuple[Match, ...]
    children: tuple[ChildSpecification, ...]


@dataclass(frozen=True, slots=True)
class Specification:
    """A parsed specification: the given, its matches, and child specifications."""

    given: Label
    matches: tuple[Match, ...]
    children: tuple[ChildSpecification, ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """A ``POST /feeds`` body: the specification and the fact its given starts from."""

    specification: Specification
    start: FactRef


_IDENTIFIER = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")
_HASH = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_SPACE = re.compile(r"\s*")
_LET = re.compile(r"let\s")


def parse_request(text: str) -> Request:
    """Parse a ``POST /feeds`` body and check it is in the supported subset.

    :raises SpecificationSyntaxError: not Jinaga's syntax (offset and what was expected).
    :raises UnsupportedSpecification: outside the subset (what, and that it is not supported).
    """
    if len(text) > MAX_SPECIFICATION_CHARS:
        raise SpecificationSyntaxError(
            f"specification of {len(text)} characters exceeds the limit of "
            f"{MAX_SPECIFICATION_CHARS}"
        )
    parser = _Parser(text)
    declarations = parser.declarations()
    givens, given_conditions = parser.givens()
    if len(givens) != 1:
        names = ", ".join(g.name for g in givens)
        raise UnsupportedSpecification(
            f"specifications with {len(givens)} givens ({names}) are not supported: "
            "factbus serves specifications with exactly one given"
        )
    given = givens[0]
    if given_conditions:
        raise UnsupportedSpecification(f"conditions on the given '{given.name}' are not supported")
    matches, labels = parser.matches([given], depth=0)
    children = parser.projection(labels)
    parser.end()
    start = declarations.get(given.name)
    if start is None:
        raise SpecificationSyntaxError(
            f"the given '{given.name}' has no declaration (let {given.name}: {given.type} = #hash)"
        )
    if start.type != given.type:
        raise SpecificationSyntaxError(
            f"the given '{given.name}' is declared as {start.type} but used as {given.type}"
        )
    return Request(Specification(given, matches, children), start)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.skip()

    # -- lexing --------------------------------------------------------------

    def skip(self) -> None:
        found = _SPACE.match(self.text, self.pos)
        assert found is not None
        self.pos = found.end()

    def preview(self) -> str:
        rest = self.text[self.pos : self.pos + 40]
        return repr(rest) if rest else "the end of the text"

    def error(self, expected: str) -> SpecificationSyntaxError:
        return SpecificationSyntaxError(
            f"at offset {self.pos}: expected {expected} but found {self.preview()}"
        )

    def continues(self, symbol: str) -> bool:
        return self.text.startswith(symbol, self.pos)

    def consume(self, symbol: str) -> bool:
        if self.continues(symbol):
            self.pos += len(symbol)
            self.skip()
            return True
        return False

    def expect(self, symbol: str) -> None:
        if not self.consume(symbol):
            raise self.error(f"'{symbol}'")

    def token(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise self.error(what)
        self.pos = found.end()
        self.skip()
        return found.group()

    def identifier(self) -> str:
        return self.token(_IDENTIFIER, "an identifier")

    def label(self) -> Label:
        name = self.identifier()
        self.expect(":")
        return Label(name, self.token(_TYPE, "a fact type"))

    def end(self) -> None:
        if self.pos < len(self.text):
            raise self.error("the end of the specification")

    # -- grammar -------------------------------------------------------------

    def declarations(self) -> dict[str, FactRef]:
        out: dict[str, FactRef] = {}
        while _LET.match(self.text, self.pos):
            self.expect("let")
            label = self.label()
            self.expect("=")
            if not self.consume("#"):
                raise UnsupportedSpecification(
                    f"declaration of '{label.name}': only fact references (#hash) are "
                    f"supported, found {self.preview()}"
                )
            fact_hash = self.token(_HASH, "a base64 fact hash")
            if len(fact_hash) != 88:
                raise SpecificationSyntaxError(
                    f"declaration of '{label.name}': a fact hash has 88 characters, "
                    f"not {len(fact_hash)}"
                )
            if label.name in out:
                raise SpecificationSyntaxError(f"'{label.name}' is declared twice")
            out[label.name] = FactRef(label.type, fact_hash)
        return out

    def givens(self) -> tuple[list[Label], bool]:
        self.expect("(")
        givens = [self.label()]
        conditions = self.given_conditions()
        while self.consume(","):
            givens.append(self.label())
            conditions = self.given_conditions() or conditions
        self.expect(")")
        return givens, conditions

    def given_conditions(self) -> bool:
        if not self.continues("["):
            return False
        depth = 0
        # Conditions on a given are refused after the givens are read; skip them
        # here by bracket depth so the error names the real problem.
        while self.pos < len(self.text):
            char = self.text[self.pos]
            depth += {"[": 1, "]": -1}.get(char, 0)
            self.pos += 1
            if depth == 0:
                break
        self.skip()
        return True

    def matches(self, labels: list[Label], depth: int) -> tuple[tuple[Match, ...], list[Label]]:
        self.expect("{")
        out: list[Match] = []
        labels = list(labels)
        while not self.consume("}"):
            match = self.match(labels, depth)
            labels.append(match.unknown)
            out.append(match)
        return tuple(out), labels

    def match(self, labels: list[Label], depth: int) -> Match:
        unknown = self.label()
        if any(label.name == unknown.name for label in labels):
            raise SpecificationSyntaxError(f"the name '{unknown.name}' is already used")
        self.expect("[")
        conditions: list[Condition] = []
        while not self.consume("]"):
            if self.consume("!"):
                self.expect("E")
                conditions.append(self.existential(labels, unknown, False, depth))
            elif self.continues("E") and self._existential_follows():
                self.expect("E")
                conditions.append(self.existential(labels, unknown, True, depth))
            else:
                conditions.append(self.path(unknown, labels))
        if not conditions:
            raise SpecificationSyntaxError(f"the match for '{unknown.name}' has no conditions")
        paths = [c for c in conditions if isinstance(c, PathCondition)]
        if not paths:
            raise UnsupportedSpecification(
                f"the match for '{unknown.name}' has no path condition: factbus needs one "
                "to find its facts"
            )
        return Match(unknown, tuple(conditions))

    def _existential_follows(self) -> bool:
        after = self.pos + 1
        rest = self.text[after:].lstrip()
        return rest.startswith("{")

    def existential(
        self, labels: list[Label], unknown: Label, exists: bool, depth: int
    ) -> ExistentialCondition:
        op = "E" if exists else "!E"
        if depth >= 1:
            raise UnsupportedSpecification(
                f"an {op} condition inside an existential condition (on '{unknown.name}') is "
                "not supported: factbus serves existential conditions one level deep"
            )
        matches, _ = self.matches([*labels, unknown], depth + 1)
        if not any(path.label_right == unknown.name for match in matches for path in match.paths):
            raise SpecificationSyntaxError(
                f"the {op} condition on '{unknown.name}' must be based on '{unknown.name}'"
            )
        return ExistentialCondition(exists, matches)

    def path(self, unknown: Label, labels: list[Label]) -> PathCondition:
        left = self.identifier()
        if left != unknown.name:
            raise SpecificationSyntaxError(
                f"the unknown '{unknown.name}' must appear on the left side of the path, "
                f"not '{left}'"
            )
        roles_left = self.roles()
        self.expect("=")
        right = self.identifier()
        if not any(label.name == right for label in labels):
            raise SpecificationSyntaxError(f"the label '{right}' has not been defined")
        return PathCondition(roles_left, right, self.roles())

    def roles(self) -> tuple[Role, ...]:
        roles: list[Role] = []
        while self.consume("->"):
            name = self.identifier()
            self.expect(":")
            roles.append(Role(name, self.token(_TYPE, "a fact type")))
        return tuple(roles)

    def projection(self, labels: list[Label], level: int = 0) -> tuple[ChildSpecification, ...]:
        if not self.consume("=>"):
            return ()
        if not self.consume("{"):
            self.singular()
            return ()
        children: list[ChildSpecification] = []
        while not self.consume("}"):
            name = self.identifier()
            self.expect("=")
            if self.continues("{"):
                if level >= MAX_CHILD_LEVELS:
                    raise UnsupportedSpecification(
                        f"child specifications nested deeper than {MAX_CHILD_LEVELS} levels "
                        "are not supported"
                    )
                matches, inner = self.matches(labels, depth=0)
                children.append(
                    ChildSpecification(name, matches, self.projection(inner, level + 1))
                )
            else:
                self.singular()
        return tuple(children)

    def singular(self) -> None:
        if self.consume("#") or self.consume("@"):
            self.identifier()
            return
        self.identifier()
        if self.consume("."):
            self.identifier()


# -- writing (feeds are carried as specification text) ------------------------


def describe(request: Request) -> str:
    """The request as jinaga.js writes it: declaration, blank line, specification."""
    given = request.specification.given
    declaration = f"let {given.name}: {given.type} = #{request.start.hash}\n"
    return declaration + "\n" + describe_specification(request.specification)


def describe_specification(spec: Specification) -> str:
    """The specification as jinaga.js's ``describeSpecification`` writes it (no projection)."""
    lines = [f"({spec.given.name}: {spec.given.type}) {{"]
    for match in spec.matches:
        _describe_match(match, 1, lines)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _describe_match(match: Match, depth: int, lines: list[str]) -> None:
    indent = "    " * depth
    lines.append(f"{indent}{match.unknown.name}: {match.unknown.type} [")
    for condition in match.conditions:
        if isinstance(condition, PathCondition):
            left = "".join(f"->{r.name}: {r.predecessor_type}" for r in condition.roles_left)
            right = "".join(f"->{r.name}: {r.predecessor_type}" for r in condition.roles_right)
            lines.append(f"{indent}    {match.unknown.name}{left} = {condition.label_right}{right}")
        else:
            lines.append(f"{indent}    {'' if condition.exists else '!'}E {{")
            for inner in condition.matches:
                _describe_match(inner, depth + 2, lines)
            lines.append(f"{indent}    }}")
    lines.append(f"{indent}]")
