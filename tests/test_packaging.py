"""The distribution is ``fanout-futures``: the name ``fanout`` on PyPI is someone else's.

An extra that names ``fanout[...]`` makes pip fetch that unrelated package, whose module
then shadows this one (a fresh ``make demo`` failed with "'fanout' is not a package").
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _names(requirements: list[str]) -> list[str]:
    return [re.split(r"[\[<>=!~;\s]", r.strip(), maxsplit=1)[0].lower() for r in requirements]


def test_no_requirement_names_the_unrelated_pypi_fanout() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["name"] == "fanout-futures"
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    names = _names(requirements)
    assert "fanout" not in names, [r for r in requirements if _names([r]) == ["fanout"]]
    assert "fanout-futures" in names  # the extras do refer to themselves, by our name
