"""Configs that name their own options.

Every instrument's settings are one frozen dataclass (``CollapseConfig``, ``ConceptsConfig``,
...). A field declared with ``option`` carries the flag the CLI gives it and its help;
from those fields the CLI builds each command's options (``difflens.cli._options``) and
``difflens compare --config`` reads each TOML table (``config_from``), under the same
names. So each default lives once, in the field, and each option has one name everywhere:
``samples`` in the TOML is ``--samples`` on the command line and ``k_samples`` in Python.

A field without ``option`` (prompts, texts, a callable) is set from Python only.
"""

import dataclasses
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from difflens.errors import DifflensWarning, InputError

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Option:
    """One config field as the CLI and the TOML see it."""

    field: str
    """The dataclass field (the Python name); dotted for a field of a nested config
    (``generation.max_new_tokens``)."""
    flag: str
    """The CLI flag, e.g. ``--samples`` (``--a/--b`` for a switch with an off flag)."""
    help: str
    default: Any
    type: Any
    """The field's annotation."""
    cli: bool = True
    """False: set in Python and the TOML only (no command-line flag)."""
    parse: Callable[[str], Any] | None = None
    """Text (a flag's value, a TOML string) -> the field's value, where the type alone does
    not say how (e.g. ``all`` or ``0,3,5`` for layers)."""

    @property
    def key(self) -> str:
        """The option's name in the TOML and in error messages: the flag without its
        dashes, ``-`` written ``_`` (``--max-new-tokens`` -> ``max_new_tokens``)."""
        return self.flag.split("/")[0].lstrip("-").replace("-", "_")

    @property
    def is_sequence(self) -> bool:
        return _sequence_item(self.type) is not None

    def from_text(self, text: str) -> Any:
        """The field's value from the text of a flag (comma-separated for a sequence)."""
        if self.parse is not None:
            return self.parse(text)
        item = _sequence_item(self.type)
        if item is None:
            return text
        try:
            return tuple(item(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise InputError(f"--{self.key.replace('_', '-')} takes a comma-separated list "
                             f"of {item.__name__}s, e.g. 1,2; got {text!r}") from None

    def to_text(self, value: Any) -> str:
        """The flag text of ``value`` (the CLI shows the default this way)."""
        if isinstance(value, tuple) and value and all(
                isinstance(v, tuple) and len(v) == 2 for v in value):  # name=values;...
            return ";".join(f"{k}={self.to_text(tuple(v))}" for k, v in value)
        if isinstance(value, tuple):
            return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value)
        return "" if value is None else str(value)


def option(default: Any = dataclasses.MISSING, *, flag: str, help: str, cli: bool = True,
           parse: Callable[[str], Any] | None = None) -> Any:
    """A config field with its CLI flag and help (see the module's docstring)."""
    metadata = {"flag": flag, "help": help, "cli": cli, "parse": parse}
    return dataclasses.field(default=default, metadata=metadata)


def options_of(cls: type, prefix: str = "", base: Any = None) -> dict[str, Option]:
    """The options of config class ``cls`` by ``Option.key``, in field order. A field
    that holds a nested config (e.g. a ``GenerationConfig``) contributes its options, under
    their own names; ``base`` (an instance) gives the defaults."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        default = getattr(base, f.name) if base is not None else f.default
        if "flag" not in f.metadata:
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                out |= options_of(type(default), f"{prefix}{f.name}.", default)
            continue
        opt = Option(field=prefix + f.name, flag=f.metadata["flag"], help=f.metadata["help"],
                     default=default, type=hints[f.name], cli=f.metadata["cli"],
                     parse=f.metadata["parse"])
        if opt.key in out:
            raise TypeError(f"{cls.__name__}: two fields take the option {opt.key}")
        out[opt.key] = opt
    return out


def _replace(config: Any, changes: Mapping[str, Any]) -> Any:
    """``config`` with (dotted) field changes applied, nested configs replaced in turn."""
    top = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for k, v in changes.items():
        if "." in k:
            head, rest = k.split(".", 1)
            nested.setdefault(head, {})[rest] = v
    for head, sub in nested.items():
        top[head] = _replace(getattr(config, head), sub)
    return dataclasses.replace(config, **top)


def read_toml(path: str | Path, *, example: str) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error is one ``InputError`` naming
    the file (and, for a syntax error, the line), with ``example`` of what to write."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; write TOML, e.g. {example}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None


def config_from(cls: type[C], values: Mapping[str, Any], *, where: str,
                base: C | None = None) -> C:
    """``base`` (default: ``cls()``) with ``values`` set, keyed by option name (``samples``,
    ``max_new_tokens`` or ``max-new-tokens``).

    A key that is no option of ``cls`` is refused in one line that names ``where`` and the
    options there are; an old Python name kept in ``cls.RENAMED`` (old -> option name) is
    read with a warning, for one release. Lists become tuples; a string given to a sequence
    (or a field with its own parser) is read as the CLI reads it.
    """
    start = cls() if base is None else base
    opts = options_of(cls, base=start)
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in opts and key in renamed:
            warnings.warn(f"{where}: {raw_key} is deprecated; use {renamed[key]}",
                          DifflensWarning, stacklevel=2)
            key = renamed[key]
        if key not in opts:
            raise InputError(f"{where}: no option {raw_key!r}; the options are "
                             f"{', '.join(opts)}")
        opt = opts[key]
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        elif isinstance(value, str) and (opt.parse is not None or opt.is_sequence):
            value = opt.from_text(value)
        changes[opt.field] = _coerce(opt.type, value)
    return _replace(start, changes)  # type: ignore[no-any-return]


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` with a TOML integer read as the float a field wants (``2`` for
    ``temperature: float``, ``[0, 1]`` for ``alphas: tuple[float, ...]``)."""
    def wants_float(t: Any) -> bool:
        args = typing.get_args(t) if typing.get_origin(t) in (typing.Union,
                                                               types.UnionType) else (t,)
        return float in args and int not in args

    def as_float(x: Any) -> Any:
        return float(x) if isinstance(x, int) and not isinstance(x, bool) else x

    item = _sequence_item(tp)
    if item is float and isinstance(value, tuple):
        return tuple(as_float(x) for x in value)
    return as_float(value) if wants_float(tp) else value


def _sequence_item(tp: Any) -> type | None:
    """``float`` for ``tuple[float, ...]`` (also inside ``X | None``); None otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        items = [_sequence_item(a) for a in typing.get_args(tp) if a is not type(None)]
        return items[0] if len(items) == 1 else None
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0]  # type: ignore[no-any-return]
    return None
