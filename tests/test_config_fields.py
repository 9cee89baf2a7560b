"""Tests of asl_jax.config_fields: a block checks itself, converts, and derives its tables."""

import dataclasses
import math
from typing import ClassVar

import pytest

from asl_jax.config_fields import (
    ConfigBlock,
    ConfigError,
    Effect,
    at_least,
    block,
    describe_fields,
    flat_mapping,
    interval,
    one_of,
    option,
)


@dataclasses.dataclass(frozen=True)
class Inner(ConfigBlock):
    PREFIX: ClassVar[str] = "inner"

    kind: str = option("a", "a kind", effect=Effect.PROGRAM, check=one_of(("a", "b")))
    rate: float = option(0.5, "a rate", effect=Effect.RESULT, check=interval(0.0, 1.0))
    path: str = option(
        "", "a path", effect=Effect.NONE, absent=lambda stored: f"from {stored.get('kind', 'a')}"
    )

    def check(self) -> None:
        if self.kind == "b" and self.rate == 0.0:
            raise self.fail("rate", self.rate, "> 0 with inner.kind='b'")


@dataclasses.dataclass(frozen=True)
class Outer(ConfigBlock):
    count: int = option(1, "a count", effect=Effect.RESULT, check=at_least(1))
    verbose: bool = option(False, "talk", effect=Effect.NONE)
    inner: Inner = block(Inner, "the inner block")


def test_defaults_walk_and_dicts():
    outer = Outer()
    assert outer.to_dict() == {
        "count": 1,
        "verbose": False,
        "inner": {"kind": "a", "rate": 0.5, "path": ""},
    }
    assert outer.flat() == {
        "count": 1,
        "verbose": False,
        "inner.kind": "a",
        "inner.rate": 0.5,
        "inner.path": "",
    }
    assert [name for name, _ in Outer.walk()] == list(outer.flat())
    assert flat_mapping(outer.to_dict()) == outer.flat()
    assert Outer.names_with(lambda e: e is Effect.NONE) == {"verbose", "inner.path"}
    rows = describe_fields(Outer)
    assert rows[0] == {"name": "count", "default": 1, "effect": Effect.RESULT, "doc": "a count"}


def test_an_integer_given_to_a_float_field_is_the_same_config():
    given_int, given_float = Inner(rate=1), Inner(rate=1.0)
    assert type(given_int.rate) is float
    assert given_int == given_float and hash(given_int) == hash(given_float)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Outer(count=0), "count=0: expected an integer >= 1"),
        (lambda: Outer(count=True), "count=True: expected an integer >= 1"),  # bool is no int
        (lambda: Outer(count=2.0), "count=2.0: expected an integer >= 1"),
        (lambda: Outer(verbose=1), "verbose=1: expected True or False"),
        (lambda: Inner(kind="c"), "inner.kind='c': expected one of a, b"),
        (lambda: Inner(rate=math.nan), "inner.rate=nan: expected a number in [0.0, 1.0]"),
        (lambda: Inner(rate="0.5"), "inner.rate='0.5': expected a number in [0.0, 1.0]"),
        (lambda: Inner(path=3), "inner.path=3: expected a string"),
        (lambda: Inner(kind="b", rate=0), "inner.rate=0.0: expected > 0 with inner.kind='b'"),
        (lambda: Outer(inner={"kind": "a"}), "inner: expected a Inner"),
    ],
)
def test_every_construction_is_checked_and_names_the_field(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value) == message


def test_replace_checks_again():
    with pytest.raises(ConfigError, match=r"inner\.rate=2\.0"):
        dataclasses.replace(Inner(), rate=2.0)


def test_from_mapping_fills_defaults_and_refuses_unknown_fields():
    assert Outer.from_mapping({}) == Outer()
    assert Outer.from_mapping({"inner": {"kind": "b"}, "count": 3}) == Outer(
        count=3, inner=Inner(kind="b")
    )
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) inner\.knd; known fields"):
        Outer.from_mapping({"inner": {"knd": "b"}})
    with pytest.raises(ConfigError, match="inner=3: expected a block"):
        Outer.from_mapping({"inner": 3})


def test_a_stored_config_reads_a_later_field_as_what_it_meant():
    # A field the stored block lacks takes its `absent` value (from the stored block), not the
    # default; a new config takes the default.
    assert Outer.from_mapping({"inner": {"kind": "b"}}, stored=True).inner.path == "from b"
    assert Outer.from_mapping({"inner": {"kind": "b"}}).inner.path == ""
    # A field without `absent` takes its default either way.
    assert Outer.from_mapping({}, stored=True).count == 1
