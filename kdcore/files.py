"""The usual permissions for what kdcore writes through :mod:`tempfile`.

Atomic writes go through ``mkstemp``/``mkdtemp``, which create files as 0600 and folders as
0700 whatever the umask. Renamed into place they would keep those modes: a cached teacher, a
teacher-output cache or a student checkpoint that colleagues on the same machine cannot read.
:func:`give_usual_mode` sets the mode a plain ``open()`` or ``mkdir`` would have given.
"""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic, hence the first way)
    os.umask(mask)
    return mask


def give_usual_mode(path: str) -> None:
    """chmod ``path`` (a file or a folder) to 0666 / 0777 less the umask."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~current_umask())
