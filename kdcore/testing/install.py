"""Install a plugin source folder into a directory by hand, in milliseconds, for tests.

``pip install --target`` takes seconds per package (it builds a wheel). For a test that only
needs "this distribution is installed and advertises these entry points", writing the
``*.dist-info`` folder that pip would write is enough: ``importlib.metadata`` (and so the kdcore
plugin loader) reads ``METADATA`` and ``entry_points.txt`` from every ``sys.path`` entry. Put
``target`` on ``PYTHONPATH`` of a subprocess, or on ``sys.path`` in-process.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def read_project(project_dir: str) -> dict[str, Any]:
    with open(os.path.join(project_dir, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _packages(project_dir: str, pyproject: dict[str, Any]) -> list[str]:
    """Top-level packages, as ``[tool.setuptools.packages.find] include`` selects them."""
    include = (pyproject.get("tool", {}).get("setuptools", {}).get("packages", {})
               .get("find", {}).get("include", ["*"]))
    found = []
    for name in sorted(os.listdir(project_dir)):
        if name == "tests" or not os.path.isfile(os.path.join(project_dir, name, "__init__.py")):
            continue
        if any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), name) for p in include):
            found.append(name)
    return found


def install_dist_info(project_dir: str, target: str) -> str:
    """Copy the packages of ``project_dir`` into ``target`` and write their ``*.dist-info``
    (name, version, ``Requires-Dist``, entry points) from ``pyproject.toml``.

    Returns the distribution name. Only static ``[project]`` metadata is supported.
    """
    pyproject = read_project(project_dir)
    project = pyproject["project"]
    name, version = project["name"], project["version"]
    os.makedirs(target, exist_ok=True)
    for package in _packages(project_dir, pyproject):
        shutil.copytree(os.path.join(project_dir, package), os.path.join(target, package),
                        ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    info = os.path.join(target, f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info")
    os.makedirs(info, exist_ok=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    groups = project.get("entry-points", {})
    with open(os.path.join(info, "entry_points.txt"), "w", encoding="utf-8") as f:
        for group, entries in groups.items():
            f.write(f"[{group}]\n")
            f.writelines(f"{key} = {value}\n" for key, value in entries.items())
            f.write("\n")
    with open(os.path.join(info, "INSTALLER"), "w", encoding="utf-8") as f:
        f.write("kdcore.testing\n")
    return name
