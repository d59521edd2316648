"""The declared dependency ranges are ones CI has actually run with (issue 23, item 2).

A range without an upper bound lets a fresh install pick up a release nobody has tested (pytest 9.2
broke the suite that way); a lower bound above what is installed means CI did not run what it declares.
"""

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def declared():
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"])
    for extra in ("space", "test"):
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("req", declared(), ids=str)
def test_every_dependency_has_a_bounded_range_that_holds_the_installed_version(req):
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), (
        f"{req} has no upper bound: a fresh install would get releases CI never ran"
    )
    try:
        installed = Version(version(req.name))
    except PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed here (an extra this run did not install)")
    assert req.specifier.contains(installed, prereleases=True), (
        f"installed {req.name} {installed} is outside the declared {req.specifier}: CI is not testing what "
        "pyproject.toml declares"
    )
