"""kdcore's version and the check of a plugin's declared kdcore range."""

from __future__ import annotations

__version__ = "0.1.7"

#: Bumped when a hookspec or base-class contract changes incompatibly.
PLUGIN_API_VERSION = 1


def _parse(v: str) -> tuple[int, ...]:
    parts = []
    for piece in v.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def version_in_range(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies a PEP 440-style ``spec`` such as ``>=0.1,<0.2``.

    Uses ``packaging`` when installed, else a small comparison of numeric parts.
    """
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(spec).contains(version, prereleases=True)
    except ImportError:  # pragma: no cover - packaging ships with pip/setuptools
        pass
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
           "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
    v = _parse(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(op):
                width = max(len(v), len(_parse(clause[len(op):])))
                a = v + (0,) * (width - len(v))
                b = _parse(clause[len(op):])
                b = b + (0,) * (width - len(b))
                if not ops[op](a, b):
                    return False
                break
    return True
