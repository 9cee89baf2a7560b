"""Typed config blocks: each field knows its default, its check, its meaning and its effect.

A config block is a frozen dataclass derived from :class:`ConfigBlock` whose fields are declared
with :func:`option`::

    @dataclasses.dataclass(frozen=True)
    class AugmentConfig(ConfigBlock):
        PREFIX: ClassVar[str] = "augment"
        cutout: float = option(0.5, "probability of one Cutout square", check=interval(0, 1))

Constructing a block checks every field (its declared type, then its :class:`Check`) and then
the block's own cross-field rules (:meth:`ConfigBlock.check`), so an instance is always valid;
``dataclasses.replace`` checks again. Integers given to a ``float`` field become floats, so that
``gamma_neg=4`` and ``gamma_neg=4.0`` are the same (hashable) config. A bad value raises
:class:`ConfigError` naming the dotted field, the value and what was expected::

    loss.clip=1.0: expected a number in [0.0, 1.0)

Everything else is derived from the declarations: the nested dict of a config file
(:meth:`ConfigBlock.to_dict`), the conversion of a mapping (a config file, a stored
``config.json``) with unknown fields refused (:meth:`ConfigBlock.from_mapping`), the table of
fields (:func:`describe_fields`) and the fields of each :class:`Effect`.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import math
import numbers
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar


class ConfigError(ValueError):
    """An invalid config value; the message names the field (``loss.clip=1.0: expected ...``)."""


class Effect(enum.Enum):
    """What changing a field does to a run.

    - ``PROGRAM``: it changes the compiled train / eval programs (and so the result).
    - ``RESULT``: it changes what the run computes but not the programs (the seed, the data, the
      number of steps, the initial weights).
    - ``NONE``: cadence, reporting and paths: a workdir may be resumed with another value.
    """

    PROGRAM = "program"
    RESULT = "result"
    NONE = "none"

    @property
    def changes_result(self) -> bool:
        return self is not Effect.NONE


@dataclasses.dataclass(frozen=True)
class Check:
    """A predicate on a field's value and the words of a valid one (``an integer >= 1``).

    ``expected`` may be a callable, read when a message is written: the options of a registry
    that code may extend after import.
    """

    expected: str | Callable[[], str]
    accepts: Callable[[Any], bool]

    def describe(self) -> str:
        return self.expected() if callable(self.expected) else self.expected


def one_of(options: Iterable[str] | Callable[[], Iterable[str]]) -> Check:
    """The value is one of ``options`` (a callable is read at check time: a registry)."""
    names = options if callable(options) else (lambda fixed=tuple(options): fixed)
    return Check(lambda: f"one of {', '.join(names())}", lambda value: value in tuple(names()))


def at_least(minimum: int) -> Check:
    """An integer ``>= minimum``."""
    return Check(f"an integer >= {minimum}", lambda value: value >= minimum)


def interval(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> Check:
    """A number in ``[low, high]``, each end open when asked (NaN is never in it)."""
    text = f"{'(' if low_open else '['}{float(low)}, {float(high)}{')' if high_open else ']'}"

    def accepts(value: float) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return Check(f"a number in {text}", accepts)


def non_negative() -> Check:
    """A number in ``[0, inf)``."""
    return interval(0.0, high_open=True)


def positive() -> Check:
    """A number in ``(0, inf)``."""
    return interval(0.0, low_open=True, high_open=True)


def option(
    default: Any,
    doc: str,
    *,
    effect: Effect,
    check: Check | None = None,
    absent: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Any:
    """Declares a config field.

    Args:
      default: the default value (the value of ``train/configs/default.py``).
      doc: a one-line description (the config reference of the documentation).
      effect: what a change of the field does (:class:`Effect`).
      check: the values allowed beyond the field's declared type.
      absent: the value the field had in a run whose stored config predates the field, from
        that stored block (default: ``default``, when the default keeps the earlier behaviour).
    """
    return dataclasses.field(
        default=default,
        metadata={"doc": doc, "effect": effect, "check": check, "absent": absent},
    )


def block(factory: Callable[[], Any], doc: str) -> Any:
    """Declares a nested block (``loss``, ``model``...) of a config."""
    return dataclasses.field(default_factory=factory, metadata={"doc": doc, "block": True})


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


#: Declared type -> (accepts, converts, words of a valid value).
_TYPES: dict[type, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), bool, "True or False"),
    int: (_is_int, int, "an integer"),
    float: (_is_real, float, "a number"),
    str: (lambda v: isinstance(v, str), str, "a string"),
}

Block = TypeVar("Block", bound="ConfigBlock")


class ConfigBlock:
    """Base of the frozen config dataclasses: checks on construction, conversion from mappings.

    Subclasses set ``PREFIX`` (``"loss"``; ``""`` for the top level) and may override
    :meth:`check` for rules between fields.
    """

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("block"):
                if not isinstance(value, hints[f.name]):
                    raise ConfigError(
                        f"{self.field_name(f.name)}: expected a {hints[f.name].__name__}"
                    )
                continue
            accepts, convert, words = _TYPES[hints[f.name]]
            check: Check | None = f.metadata.get("check")
            expected = check.describe() if check is not None else words
            if not accepts(value) or (check is not None and not check.accepts(value)):
                raise self.fail(f.name, value, expected)
            if type(value) is not hints[f.name]:
                object.__setattr__(self, f.name, convert(value))
        self.check()

    def check(self) -> None:
        """Rules between the fields of the block (each field is already valid on its own)."""

    @classmethod
    def field_name(cls, name: str) -> str:
        """The dotted name of field ``name`` (``loss.clip``)."""
        return f"{cls.PREFIX}.{name}" if cls.PREFIX else name

    def fail(self, name: str, value: Any, expected: str) -> ConfigError:
        """The error of field ``name`` holding ``value``: ``loss.clip=1.0: expected ...``."""
        return ConfigError(f"{self.field_name(name)}={value!r}: expected {expected}")

    @classmethod
    def from_mapping(cls: type[Block], values: Mapping[str, Any], *, stored: bool = False) -> Block:
        """The block of a (nested) mapping: a ``ConfigDict``, a dict, a stored ``config.json``.

        A field the mapping lacks takes its default; with ``stored`` (a config written by an
        earlier version of the project) it takes what it meant for that run (``absent`` of
        :func:`option`). A key that is not a field is refused, naming the known fields.
        """
        values = nested_dict(values)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in values if k not in fields)
        if unknown:
            names = [cls.field_name(k) for k in unknown]
            raise ConfigError(
                f"unknown config field(s) {', '.join(names)}; known fields: "
                f"{', '.join(sorted(name for name, _ in cls.walk()))}"
            )
        hints = _type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if f.metadata.get("block"):
                nested = values.get(name, {})
                if not isinstance(nested, Mapping) and not hasattr(nested, "items"):
                    raise ConfigError(f"{cls.field_name(name)}={nested!r}: expected a block")
                kwargs[name] = hints[name].from_mapping(nested, stored=stored)
            elif name in values:
                kwargs[name] = values[name]
            elif stored and f.metadata.get("absent") is not None:
                kwargs[name] = f.metadata["absent"](values)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of plain values (``config.json``, a ``ConfigDict``)."""
        return {
            f.name: (
                getattr(self, f.name).to_dict()
                if f.metadata.get("block")
                else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }

    def flat(self) -> dict[str, Any]:
        """``{"loss.clip": 0.05, ...}``: every field by its dotted name."""
        return {name: value for name, (_, value) in self.walk_values()}

    @classmethod
    def walk(cls) -> Iterator[tuple[str, dataclasses.Field]]:
        """``(dotted name, dataclass field)`` of every field, nested blocks included, in order."""
        hints = _type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("block"):
                yield from hints[f.name].walk()
            else:
                yield cls.field_name(f.name), f

    def walk_values(self) -> Iterator[tuple[str, tuple[dataclasses.Field, Any]]]:
        """``(dotted name, (field, value))`` of every field of this instance."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("block"):
                yield from value.walk_values()
            else:
                yield self.field_name(f.name), (f, value)

    @classmethod
    def names_with(cls, predicate: Callable[[Effect], bool]) -> frozenset[str]:
        """The dotted names of the fields whose effect satisfies ``predicate``."""
        return frozenset(name for name, f in cls.walk() if predicate(f.metadata["effect"]))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def nested_dict(values: Any) -> dict[str, Any]:
    """A nested dict (a copy) of a config block, an ``ml_collections.ConfigDict`` or a mapping."""
    if hasattr(values, "to_dict"):  # a ConfigBlock or a ConfigDict
        return values.to_dict()
    return copy.deepcopy(dict(values.items()))


def flat_mapping(values: Any, prefix: str = "") -> dict[str, Any]:
    """``{"loss.clip": 0.05, ...}`` of a nested mapping or block, without checking its values."""
    out: dict[str, Any] = {}
    for key, value in nested_dict(values).items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            out.update(flat_mapping(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_fields(config: type[ConfigBlock]) -> list[dict[str, Any]]:
    """One row per field of ``config``: ``name``, ``default``, ``effect`` and ``doc``."""
    return [
        {
            "name": name,
            "default": f.default,
            "effect": f.metadata["effect"],
            "doc": f.metadata["doc"],
        }
        for name, f in config.walk()
    ]
