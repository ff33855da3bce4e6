"""The machinery under config.py: YAML loading, `${VAR}` interpolation, and `Reader`.

Nothing here knows the Backworks schema. `Reader` wraps one mapping of the file and
hands out typed values, recording each problem with its key path instead of raising,
so that a bad file is reported in full at once.

A config file may be written by someone other than the operator (a watched file, a
shared folder), so reading it is bounded: at most MAX_CONFIG_BYTES of text, nested at
most MAX_DEPTH levels deep, and at most MAX_VALUES values once every alias is counted
as what it stands for. A "billion laughs" document (aliases of aliases, each level
multiplying the one below) is refused while it is composed, before anything is built
from it; an alias inside the node it names (a recursive structure) is refused too.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_S = TypeVar("_S", bound=str)
_T = TypeVar("_T")
# What `Reader.value` returns for an absent key (None is a present `null`).
MISSING: Any = object()

# `$${` is a literal `${`; the last branch catches a `${` that is not a valid reference.
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"-?[0-9]+")


def key_path(parent: str, key: str | int) -> str:
    """`plugins.weather`, `hooks[0]`, `endpoints["/health"]`: readable and unambiguous."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENTIFIER.fullmatch(key.replace("-", "_")):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def show(value: object) -> str:
    """A received value as the message should quote it: YAML spellings, short strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# -- YAML -------------------------------------------------------------------------

# The bounds of a config file (see the module's doc). A real config is a few hundred
# values and a few levels deep; these leave room for a thousand-endpoint one.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 250_000


class _Refused(yaml.MarkedYAMLError):
    """The document is over a bound of this module, or recursive: refused, not built."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    """A SafeLoader that records duplicate mapping keys, which PyYAML silently merges
    by keeping the last (an edited copy of a plugin block would override the first),
    and refuses a document over the bounds while composing it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        self._depth = 0
        self._open: set[str] = set()  # anchors of the nodes being composed
        # Per composed node (by id; the tree keeps them alive): how many values and how
        # many levels it stands for with its aliases expanded. Each node is measured
        # once, from its children's measures, so a bomb costs no more than its text.
        self._measures: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                msg = (
                    f"the alias *{event.anchor} stands for a node that contains it; a config "
                    "cannot be recursive"
                )
                raise _Refused(msg, event.start_mark)
            return super().compose_node(parent, index)
        # Checked before going down: PyYAML composes recursively, and a deeper document
        # would end in a RecursionError.
        if self._depth >= MAX_DEPTH:
            msg = f"nested more than {MAX_DEPTH} levels deep"
            raise _Refused(msg, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)
        if node is not None:
            self._measure(node)
        return node

    def _measure(self, node: Node) -> None:
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, SequenceNode):
            children = node.value
        else:
            children = []
        measures = self._measures
        values = 1 + sum(measures[id(child)][0] for child in children)
        depth = 1 + max((measures[id(child)][1] for child in children), default=0)
        if values > MAX_VALUES:
            msg = (
                f"holds more than {MAX_VALUES} values once its aliases are expanded (an alias "
                "counts as all it stands for); a config this large is refused"
            )
            raise _Refused(msg, node.start_mark)
        if depth > MAX_DEPTH:
            msg = f"nested more than {MAX_DEPTH} levels deep once its aliases are expanded"
            raise _Refused(msg, node.start_mark)
        measures[id(node)] = (values, depth)

    def construct_document(self, node: Node) -> Any:
        self._find_duplicates(node, "", set())
        return super().construct_document(node)

    def _find_duplicates(self, node: Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias may point back at its own ancestor
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._find_duplicates(item, key_path(path, i), seen)
        elif isinstance(node, MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, ScalarNode):
                    continue
                line = key.start_mark.line + 1
                where = key_path(path, key.value)
                first = first_line.get((key.tag, key.value))
                if first is None:
                    first_line[key.tag, key.value] = line
                else:
                    self.duplicates.append(
                        f"{where}: duplicate key on line {line} (first on line {first}); "
                        "YAML would silently keep only the last"
                    )
                self._find_duplicates(value, where, seen)


def load_yaml(text: str) -> tuple[object, list[str]]:
    """Parses one YAML document; returns the data and the problems (syntax, duplicates)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    except _Refused as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        return None, [f"{where}: {e.problem}"]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        what = " ".join(p for p in (e.context, e.problem) if p)
        return None, [f"{where}: invalid YAML: {what}"]
    except yaml.YAMLError as e:
        return None, [f"invalid YAML: {e}"]
    finally:
        loader.dispose()


# -- interpolation ----------------------------------------------------------------


class EnvStr(str):
    """A value that was one whole `${VAR}` reference. The environment only holds text,
    so for these (and only these) `Reader` accepts "8080" as an int and "true" as a bool:
    `port: ${PORT:-3000}` must work, while `port: "3000"` written in the file stays an error."""

    __slots__ = ()


def interpolate(data: object, path: str, env: Mapping[str, str], problems: list[str]) -> object:
    """Replaces `${VAR}` and `${VAR:-default}` in every string value (not in keys)."""
    if isinstance(data, dict):
        return {k: interpolate(v, key_path(path, str(k)), env, problems) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, key_path(path, i), env, problems) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def substitute(m: re.Match[str]) -> str:
        name, default = m[1], m[2]
        if m[0] == "$${":
            return "${"
        if name is None:
            problems.append(
                f"{path}: malformed reference in {show(data)}; write ${{NAME}} or "
                "${NAME:-default}, or $${ for a literal ${"
            )
            return ""
        value = env.get(name, "")
        # As in the shell, `:-` also replaces a variable that is set but empty.
        if value == "" and default is not None:
            return default
        if name not in env:
            problems.append(
                f"{path}: environment variable {name!r} is not set "
                f"(write ${{{name}:-default}} to give a default)"
            )
        return value

    result = _REFERENCE.sub(substitute, data)
    whole = _REFERENCE.fullmatch(data)
    return EnvStr(result) if whole and whole[1] else result


# -- reading ----------------------------------------------------------------------


class Reader:
    """One mapping of the config; every getter records what it was asked for, so
    `done()` can report the keys nobody asked about (with a did-you-mean hint)."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self._known: list[str] = []
        self._data: dict[str, object] = {}
        if data is None:  # `plugins:` with every entry commented out, or `weather:`
            return
        if not isinstance(data, dict):
            self.problem(None, f"must be a mapping (got {show(data)})")
            return
        for key, value in data.items():
            if isinstance(key, str):
                self._data[key] = value
            else:
                self.problem(None, f"keys must be strings (got {show(key)})")

    def at(self, key: str | int | None) -> str:
        if key is None:
            return self.path or "top level"
        return key_path(self.path, key)

    def problem(self, key: str | int | None, message: str) -> None:
        self.problems.append(f"{self.at(key)}: {message}")

    def value(self, key: str) -> object:
        """The raw value, or MISSING; marks the key as known, as every getter does."""
        self._known.append(key)
        return self._data.get(key, MISSING)

    def has(self, key: str) -> bool:
        return self.value(key) is not MISSING

    def _typed(
        self,
        key: str,
        default: _T,
        expected: str,
        convert: Callable[[object], _T | None],
        *,
        nullable: bool = False,
    ) -> _T:
        raw = self.value(key)
        if raw is MISSING or (raw is None and nullable):
            return default
        value = convert(raw)
        if value is None:
            hint = _quote_hint(raw) if "string" in expected else ""
            self.problem(key, f"must be {expected} (got {show(raw)}{hint})")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self._typed(key, default, "true or false", _as_bool)

    def integer(self, key: str, default: int, *, low: int = 1, high: int | None = None) -> int:
        return self._typed(key, default, _int_words(low, high), _as_int(low, high))

    def optional_integer(self, key: str, *, low: int = 1, high: int | None = None) -> int | None:
        words = f"{_int_words(low, high)} or null"
        return self._typed(key, None, words, _as_int(low, high), nullable=True)

    def text(self, key: str, default: str) -> str:
        return self._typed(key, default, "a string", _as_str)

    def optional_text(self, key: str) -> str | None:
        return self._typed(key, None, "a string or null", _as_str, nullable=True)

    def choice(self, key: str, default: _S, options: tuple[_S, ...]) -> _S:
        words = ", ".join(repr(o) for o in options)
        return self._typed(key, default, f"one of {words}", lambda v: _pick(v, options))

    def strings(
        self, key: str, check: Callable[[str], str | None] | None = None
    ) -> tuple[str, ...]:
        """A list of strings; `check` returns a problem for an item, or None if it is fine."""
        raw = self.value(key)
        if raw is MISSING or raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(key, f"must be a list of strings (got {show(raw)})")
            return ()
        items = []
        for i, item in enumerate(raw):
            where = key_path(self.at(key), i)
            if not isinstance(item, str):
                self.problems.append(f"{where}: must be a string (got {show(item)})")
            elif check and (message := check(item)):
                self.problems.append(f"{where}: {message}")
            else:
                items.append(item)
        return tuple(items)

    def section(self, key: str) -> Reader:
        raw = self.value(key)
        return Reader(None if raw is MISSING else raw, self.at(key), self.problems)

    def entries(self, key: str) -> Iterator[tuple[str, Reader]]:
        """The children of a mapping of named sections (`plugins:`, `endpoints:`)."""
        outer = self.section(key)
        for name, raw in outer._data.items():
            yield name, Reader(raw, outer.at(name), self.problems)

    def string_map(self, key: str, check: Callable[[str, str], str | None]) -> dict[str, str]:
        """A mapping of strings to strings; `check(k, v)` returns a problem or None."""
        outer = self.section(key)
        result = {}
        for name, raw in outer._data.items():
            if not isinstance(raw, str):
                outer.problem(name, f"must be a string (got {show(raw)}{_quote_hint(raw)})")
            elif message := check(name, raw):
                outer.problem(name, message)
            else:
                result[name] = raw
        return result

    def json_text(self, key: str, value: object) -> str | None:
        """`value` as JSON text; None after recording what json.dumps would reject
        or silently change (a non-string key), each with its own key path."""
        before = len(self.problems)
        _json_problems(value, self.at(key), self.problems)
        if len(self.problems) > before:
            return None
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    def done(self, result: _T) -> _T:
        """Reports every key that no getter asked for (unknown keys are never ignored),
        then hands back `result`, the object built from this section."""
        for key in self._data:
            if key in self._known:
                continue
            close = difflib.get_close_matches(key, self._known, n=1)
            known = ", ".join(repr(k) for k in dict.fromkeys(self._known))
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of {known}"
            self.problem(key, f"unknown key ({hint})")
        return result


def _json_problems(value: object, path: str, problems: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                _json_problems(v, key_path(path, k), problems)
            else:
                problems.append(f"{path}: keys must be strings in JSON (got {show(k)}; quote it)")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_problems(v, key_path(path, i), problems)
    elif isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: must be a finite number in JSON (got {show(value)})")
    elif value is not None and not isinstance(value, str | int | float):
        problems.append(f"{path}: must be JSON data (got {show(value)}); quote it")


def _quote_hint(raw: object) -> str:
    # `version: 1.0` is a float to YAML; say how to make it the string it looks like.
    return "; quote it" if isinstance(raw, int | float) else ""


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, EnvStr) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _as_int(low: int, high: int | None) -> Callable[[object], int | None]:
    def convert(value: object) -> int | None:
        if isinstance(value, EnvStr) and _INTEGER.fullmatch(value):
            value = int(value)
        # A bool is an int to Python, never to a config reader.
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        return value if low <= value and (high is None or value <= high) else None

    return convert


def _int_words(low: int, high: int | None) -> str:
    if high is not None:
        return f"an integer from {low} to {high}"
    if low in (0, 1):
        return "a positive integer" if low == 1 else "a non-negative integer"
    return f"an integer of at least {low}"


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _pick(value: object, options: tuple[_S, ...]) -> _S | None:
    return next((o for o in options if value == o), None)
