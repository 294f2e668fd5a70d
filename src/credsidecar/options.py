"""Options spelled once: a flag, the CREDSIDECAR_* variable derived from it, and the config
field it fills, so one table (config.py) generates argparse, the variables and the dataclass.

- Precedence: the flag, else its variable, else the dataclass's default. An empty value means
  the default. Defaults live only in the dataclass; a help text shows one with "{default}".
- Switches (`--link-local`) read 1/true/yes or 0/false/no from their variable, in any case.
- List options: a comma-separated value (`--clouds aws,gcp`), or a repeatable flag
  (`--allow-uid`, `--job-env`) taking one item per use, whose variable holds the items
  comma-separated; giving the flag replaces the variable's items rather than adding to them
  (the flag wins, as everywhere). For NAME=VALUE items a comma stays in the value unless NAME=
  follows it.
- Values are read when the config is built, not when the parser is: a bad variable fails the
  command that uses it with a ConfigError naming it, never `--help` or another command.

Imports only the standard library and errors.py: every command builds its parser from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from credsidecar.errors import ConfigError

__all__ = [
    "ASSIGNMENTS",
    "INT",
    "PATH",
    "SECONDS",
    "SWITCH",
    "TEXT",
    "WORDS",
    "Kind",
    "Option",
    "add_options",
    "build",
    "group",
]

ENV_PREFIX = "CREDSIDECAR_"
# A bad value is echoed in the error this far: enough to recognise, never a wall of text.
SHOWN_CHARS = 40

# Each parser takes one item's text and raises ValueError with the reason, worded to follow
# "<flag or variable> '<value>'" (and to say what to give instead).


def _path(text: str) -> Path:
    return Path(text).resolve()


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError("is not a number of seconds (e.g. 30 or 0.5)")
    return value


_YES, _NO = ("1", "true", "yes"), ("0", "false", "no")


def _yes_no(text: str) -> bool:
    if text.lower() not in _YES + _NO:
        raise ValueError(f"is not a yes/no value: use {', '.join(_YES)} or {', '.join(_NO)}")
    return text.lower() in _YES


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError("is not NAME=VALUE")
    return name, value


def _split_commas(text: str) -> list[str]:
    return text.split(",")


# A comma followed by NAME= starts the next item; any other comma belongs to the value.
_NEXT_ASSIGNMENT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*=)")


def _split_assignments(text: str) -> list[str]:
    return _NEXT_ASSIGNMENT.split(text)


@dataclass(frozen=True)
class Kind:
    """How an option's text becomes its value."""

    parse: Callable[[str], Any]
    switch: bool = False  # a flag without a value (store_true)
    # A list option: how its items combine into the field's value (None: a single value).
    combine: Callable[[list[Any]], Any] | None = None
    repeat: bool = False  # the flag repeats, one item per use (else one comma-separated value)
    split: Callable[[str], list[str]] = _split_commas


TEXT = Kind(str)
PATH = Kind(_path)
INT = Kind(_int)
SECONDS = Kind(_seconds)
SWITCH = Kind(_yes_no, switch=True)
WORDS = Kind(str, combine=lambda items: frozenset(items) or None)
ASSIGNMENTS = Kind(_assignment, combine=dict, repeat=True, split=_split_assignments)

_UNSET: Any = object()  # neither flag nor variable: the dataclass default applies


@dataclass(frozen=True)
class Option:
    """One setting: its flag, the variable derived from it, and the config field it fills."""

    flag: str
    kind: Kind
    help: str | None = None  # "{default}" is replaced by the field's default
    metavar: str | None = None
    group: str = ""
    field: str = ""  # the config field, when it is not the flag's name

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def name(self) -> str:
        return self.field or self.dest

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    def add_to(self, parser: argparse._ActionsContainer, default: object) -> None:
        text = self.help.replace("{default}", str(default)) if self.help else None
        if self.kind.switch:
            parser.add_argument(self.flag, action="store_true", default=None, help=text)
            return
        action = "append" if self.kind.repeat else "store"
        parser.add_argument(self.flag, action=action, default=None, metavar=self.metavar,
                            help=text)  # fmt: skip

    def value(self, given: Any, env: Mapping[str, str]) -> Any:
        """The flag's value if it was given, else the variable's, else `_UNSET`."""
        if given is not None:
            if self.kind.switch:
                return True
            return self._parse(given if self.kind.repeat else [given], self.flag, split=False)
        text = env.get(self.variable, "").strip()
        if not text:
            return _UNSET
        if self.kind.switch:
            return self._parse_one(text, self.variable)
        return self._parse([text], self.variable, split=True)

    def _parse(self, texts: list[str], source: str, split: bool) -> Any:
        combine = self.kind.combine
        if combine is None:
            text = texts[0].strip()
            return self._parse_one(text, source) if text else _UNSET
        if split or not self.kind.repeat:
            texts = [item for text in texts for item in self.kind.split(text)]
        return combine([self._parse_one(t.strip(), source) for t in texts if t.strip()])

    def _parse_one(self, text: str, source: str) -> Any:
        try:
            return self.kind.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{source} {text[:SHOWN_CHARS]!r} {exc}") from None


def group(name: str, *options: Option) -> tuple[Option, ...]:
    """`options` shown under `name` in the help."""
    return tuple(dataclasses.replace(option, group=name) for option in options)


_T = TypeVar("_T")
# Where the parser keeps the options' variables until the config is built.
_ENV_DEST = "_credsidecar_option_variables"


def _defaults(cls: type[Any]) -> dict[str, object]:
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def add_options(
    parser: argparse.ArgumentParser,
    options: Iterable[Option],
    cls: type[Any],
    env: Mapping[str, str],
) -> None:
    """Adds each option's flag to `parser` and keeps its variable from `env` for `build`."""
    options = tuple(options)
    defaults = _defaults(cls)
    groups: dict[str, argparse._ActionsContainer] = {"": parser}
    for option in options:
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        option.add_to(groups[option.group], defaults.get(option.name))
    # Only the options' own variables are kept, never a copy of the whole environment (which
    # may hold the launch token that --token-env names).
    kept = {o.variable: env[o.variable] for o in options if o.variable in env}
    parser.set_defaults(**{_ENV_DEST: kept})


def build(cls: type[_T], options: Iterable[Option], args: argparse.Namespace) -> _T:
    """`cls` from the parsed flags, else the kept variables, else its own defaults."""
    env: Mapping[str, str] = getattr(args, _ENV_DEST, {})
    values = {o.name: o.value(getattr(args, o.dest, None), env) for o in options}
    return cls(**{name: value for name, value in values.items() if value is not _UNSET})
