"""The README's config reference matches the config schema: every field, with its default."""

import pathlib
import re

import pytest

from asl_jax.training.config import FIELDS, flatten
from train.configs.default import get_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# A row of the config table: | `field` | `default` | meaning |, or two fields in one row.
ROW = re.compile(r"^\| (`[a-z_.]+`(?:, `[a-z_.]+`)*) \| (`.*?`(?:, `.*?`)*) \| .+ \|$")


def _readme_defaults():
    section = README.read_text(encoding="utf-8").split("## Config reference", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            names = re.findall(r"`([a-z_.]+)`", match.group(1))
            values = re.findall(r"`(.*?)`", match.group(2))
            assert len(names) == len(values), line
            rows.update(zip(names, values, strict=True))
    return rows


DEFAULTS = flatten(get_config())


def test_readme_lists_every_config_field():
    assert set(_readme_defaults()) == set(DEFAULTS) == set(FIELDS)


@pytest.mark.parametrize("field", sorted(DEFAULTS))
def test_readme_default_is_the_config_default(field):
    assert _readme_defaults().get(field) == repr(DEFAULTS[field])
