"""Typed trainer options: what each ``--set KEY=VALUE`` may hold, checked before anything is created.

Every trainer option has an :class:`Option`: its kind (``int``, ``float``, ``bool``, ``str``, ``path``, ``dict``,
``float_list``, ``int_list``), its allowed range or choices, and what ``None`` means where ``None`` is allowed
(``"the plan's value"``, ``"the preset's value"``...). A trainer class declares the options it adds in its own
``options`` dict beside its ``defaults``; :func:`option_schema` merges them along the class hierarchy, so a subclass
inherits every parent option with its schema and may re-declare one (another range) by name.

:func:`check_options` runs in :class:`~sampref_bench.trainers.base.BaseTrainer`'s constructor before the run folder
is named, and in ``sampref_benchmark``'s up-front check of the whole grid (``--dry-run`` included): every problem of
a request is listed at once, each naming the key, the value given, the expected kind and range, and for an unknown
key the closest known ones. ``sampref_train --list-options TRAINER`` prints the schema (:func:`describe_options`).

Values arrive parsed as JSON where they parse (``lr=3e-4`` is a float, ``model=vit_b`` the string ``"vit_b"``). A
checked value is normalized: an integral float given for an ``int`` (``2.0``) becomes ``2``; a ``bool`` also takes
``yes``/``no``, ``on``/``off``, ``true``/``false`` and ``1``/``0``, so ``freeze_image_encoder=no`` is ``False``
(before these schemas it was the string ``"no"``, which Python counts as true). An ``int`` given for a ``float``
stays an ``int`` (the run tag of an existing run does not change).

A key of a trainer's ``defaults`` with no declared schema (a trainer written before schemas, outside sampref) is
typed by its default's kind when the default is not ``None``, and is left unchecked otherwise.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sampref_bench.utilities.errors import SamprefError

KINDS = ("int", "float", "bool", "str", "path", "dict", "float_list", "int_list", "any")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Option:
    """The schema of one option.

    Args:
        kind: one of :data:`KINDS`.
        low, high: inclusive bounds of a number (of each element of a list); ``None``: unbounded.
        low_open, high_open: make the bound exclusive.
        choices: the allowed values of a ``str``, or a function returning them (resolved when checked).
        none: what ``None`` means for this option; empty: ``None`` is not allowed.
        help: one line for ``--list-options``.
        ignore_case: compare a ``str`` with its choices case-insensitively (the value is kept as given).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    none: str = ""
    help: str = ""
    ignore_case: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Option kind {self.kind!r} is not one of {KINDS}")

    # ------------------------------------------------------------------ text
    def allowed_choices(self) -> tuple[str, ...] | None:
        """The choices as a tuple (a callable is resolved now)."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def _range(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_num(self.low)}"
        return f" {'<' if self.high_open else '<='} {_num(self.high)}"

    def expected(self) -> str:
        """What the option takes, in words: ``an integer >= 1``, ``one of dpo, ipo``, ``a list of floats in (0, 1)``."""
        choices = self.allowed_choices()
        if choices is not None:
            text = "one of " + ", ".join(choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "path": "a file or folder path", "dict": "a JSON object", "float_list": "a JSON list of numbers",
                    "int_list": "a JSON list of integers", "any": "any JSON value"}[self.kind]
            if self.kind in ("int", "float", "float_list", "int_list"):
                text += (" each" if self.kind.endswith("_list") else "") + self._range()
        if self.none:
            text += f", or null ({self.none})"
        return text

    # ----------------------------------------------------------------- check
    def check(self, key: str, value: Any) -> Any:
        """``value`` normalized; a :class:`SamprefError` naming ``key``, ``value`` and :meth:`expected` if it does
        not fit."""
        if value is None:
            if self.none:
                return None
            raise self._error(key, value, "null is not allowed")
        if self.kind == "any":
            return value
        if self.kind == "bool":
            return self._bool(key, value)
        if self.kind in ("int", "float"):
            return self._number(key, value, self.kind)
        if self.kind in ("str", "path"):
            if not isinstance(value, str) or (self.kind == "path" and not value.strip()):
                raise self._error(key, value)
            choices = self.allowed_choices()
            folded = (lambda text: text.strip().lower()) if self.ignore_case else (lambda text: text)
            if choices is not None and folded(value) not in {folded(c) for c in choices}:
                close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
                raise self._error(key, value, f"did you mean {close[0]!r}?" if close else "")
            return value
        if self.kind == "dict":
            if not isinstance(value, dict):
                raise self._error(key, value)
            return value
        # lists
        if not isinstance(value, (list, tuple)) or not value:
            raise self._error(key, value, "a non-empty list is needed" if isinstance(value, (list, tuple)) else "")
        element = "int" if self.kind == "int_list" else "float"
        return [self._number(key, item, element, whole=value) for item in value]

    def _bool(self, key: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise self._error(key, value)

    def _number(self, key: str, value: Any, kind: str, whole: Any = None) -> int | float:
        shown = value if whole is None else whole
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(key, shown)
        if not math.isfinite(value):
            raise self._error(key, shown, "a finite number is needed")
        if kind == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise self._error(key, shown, f"{value} is not a whole number")
                value = int(value)
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            raise self._error(key, shown, "out of range")
        return value

    def _error(self, key: str, value: Any, why: str = "") -> SamprefError:
        return SamprefError(f"--set {key}={_shown(value)}: expected {self.expected()}" + (f" ({why})" if why else ""))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _inferred(default: Any) -> Option:
    if isinstance(default, bool):
        return Option("bool")
    if isinstance(default, int):
        return Option("int")
    if isinstance(default, float):
        return Option("float")
    if isinstance(default, str):
        return Option("str")
    if isinstance(default, dict):
        return Option("dict")
    return Option("any", none="allowed")


def option_schema(cls: type) -> dict[str, Option]:
    """Every option of trainer class ``cls``: the ``options`` declared along its class hierarchy (a subclass's own
    declaration wins), plus a schema inferred from the default for a key of ``defaults`` declared nowhere."""
    schema: dict[str, Option] = {}
    for klass in reversed(cls.__mro__):
        schema.update(klass.__dict__.get("options", {}))
    defaults: dict[str, Any] = getattr(cls, "defaults", {})
    return {key: schema[key] if key in schema else _inferred(defaults[key]) for key in defaults}


def undeclared_options(cls: type) -> list[str]:
    """Keys of ``cls.defaults`` without a declared :class:`Option` (their schema is only inferred)."""
    declared: set[str] = set()
    for klass in cls.__mro__:
        declared.update(klass.__dict__.get("options", {}))
    return sorted(set(getattr(cls, "defaults", {})) - declared)


def option_problems(cls: type, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(normalized overrides, problems)``: every unknown key (with the closest known keys) and every value that
    does not fit its schema, as sentences; the normalized dict holds the keys that passed."""
    schema = option_schema(cls)
    name = getattr(cls, "__name__", str(cls))
    normalized: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in overrides.items():
        option = schema.get(key)
        if option is None:
            close = difflib.get_close_matches(key, list(schema), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(f"--set {key}={_shown(value)}: {name} has no option {key!r}{hint} "
                            f"(`sampref_train --list-options {name}` lists them)")
            continue
        try:
            normalized[key] = option.check(key, value)
        except SamprefError as err:
            problems.append(str(err))
    return normalized, problems


def check_options(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` normalized by :func:`option_schema`; one :class:`SamprefError` listing every problem."""
    normalized, problems = option_problems(cls, overrides)
    if problems:
        name = getattr(cls, "__name__", str(cls))
        head = "an option is wrong" if len(problems) == 1 else f"{len(problems)} options are wrong"
        raise SamprefError(f"{name}: {head}; nothing was created:\n  - " + "\n  - ".join(problems))
    return normalized


def describe_options(cls: type) -> str:
    """The schema of ``cls`` as a table: key, default, what it takes, and the help line."""
    schema = option_schema(cls)
    defaults: dict[str, Any] = getattr(cls, "defaults", {})
    rows = [(key, _shown(defaults.get(key)), option.expected(), option.help) for key, option in schema.items()]
    width = max(len(r[0]) for r in rows) if rows else 0
    dwidth = min(max(len(r[1]) for r in rows), 18) if rows else 0
    lines = [f"options of {cls.__name__} (--set KEY=VALUE; values parsed as JSON):"]
    for key, default, expected, text in rows:
        lines.append(f"  {key:<{width}}  {default:<{dwidth}}  {expected}" + (f". {text}" if text else ""))
    return "\n".join(lines)
