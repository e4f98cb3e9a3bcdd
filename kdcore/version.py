"""kdcore's version, its plugin API version, and the check of a plugin's declared kdcore range."""

from __future__ import annotations

from packaging.specifiers import SpecifierSet

#: The one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``),
#: so no installed metadata, such as a stale ``kdcore.egg-info`` on ``sys.path``, can shadow it.
__version__ = "0.1.9"

#: Bumped when a hookspec or base-class contract changes incompatibly. A plugin that declares a
#: higher ``KDCORE_PLUGIN_API`` in its entry-point module is refused by name (kdcore.plugins).
PLUGIN_API_VERSION = 1


def version_in_range(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies a PEP 440 ``spec`` such as ``>=0.1,<0.2``; a pre-release
    kdcore (0.2.0rc1) fits a range that holds it. An invalid ``spec`` raises
    ``packaging.specifiers.InvalidSpecifier``."""
    return SpecifierSet(spec).contains(version, prereleases=True)
