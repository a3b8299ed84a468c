"""One version for the bundle: the package metadata and the API docs say the same."""

import tomllib

import serving
from tests.helpers import ROOT


def test_pyproject_and_the_api_agree_on_the_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == serving.__version__
