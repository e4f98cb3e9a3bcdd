"""The one exception type for mistakes a user can fix, and the "did you mean" helper.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2; anything else
is a bug in kdcore or a plugin and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem in the user's config, command line, files or environment.

    The message must name the exact key, path or file at fault and, where possible, what to do.
    ``key_path`` says, as data, which config key or block the message already names
    (``trainer.epochs``, ``algorithm``): code that adds a location (a component's factory is
    called under its block's key path) adds it only when ``key_path`` is None.
    """

    def __init__(self, message: str, *, key_path: str | None = None) -> None:
        super().__init__(message)
        self.key_path = key_path


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choices, or ``""`` when none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    if not close:
        lowered = [c for c in choices if word.lower() in c.lower() or c.lower() in word.lower()]
        close = lowered[:n]
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
