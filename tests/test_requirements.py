"""requirements.txt admits the versions the code runs on: every pinned range holds the installed version."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from tests.conftest import ROOT


def test_every_requirement_range_admits_the_installed_version():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        installed = version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req} does not admit the installed {installed}"


def test_transformers_range_starts_where_pretrainedconfig_is_exported():
    import transformers

    req = next(Requirement(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
               if line.startswith("transformers"))
    assert hasattr(transformers, "PreTrainedConfig")  # what models/transformer.py imports
    # 4.x (up to 4.57.x) exports only PretrainedConfig: no 4.x version may satisfy the range
    assert not req.specifier.contains("4.57.6") and req.specifier.contains("5.0.0")


def test_pyproject_installs_every_top_level_module_and_package():
    """`pip install -e .` maps only what pyproject.toml lists (subpackages too): a module left out imports in the checkout (pytest's
    pythonpath) but not from benchmarks/ on a fresh machine."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules = {p.stem for p in ROOT.glob("*.py")}
    tops = [d for d in ROOT.iterdir() if d.is_dir() and (d / "__init__.py").is_file()]  # not .venv, build, ...
    packages = {".".join(p.parent.relative_to(ROOT).parts) for d in tops for p in d.rglob("__init__.py")}
    packages |= {"benchmarks"}
    assert set(setup["py-modules"]) == modules
    assert set(setup["packages"]) == packages


def test_pyproject_dependencies_are_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["dependencies"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
